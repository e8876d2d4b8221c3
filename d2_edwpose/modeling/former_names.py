"""Former names of renamed components, kept registered so that existing configs still build."""

__all__ = ["register_former_name"]


def register_former_name(registry, former_name, obj):
    """Register ``obj`` in a detectron2 registry also under ``former_name``, the name it had
    before a rename, so that configs naming it keep building the same object; returns ``obj``.

    ``Registry.register`` files an object under its ``__name__`` only (detectron2 0.6 and main
    share fvcore's ``Registry``, whose ``_do_register`` takes any name).
    """
    registry._do_register(former_name, obj)
    return obj
