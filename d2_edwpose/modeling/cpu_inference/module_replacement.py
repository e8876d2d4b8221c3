"""What the rewrites share: which convs they may rewrite, and how a submodule is replaced."""

from torch import nn

from detectron2.layers import Conv2d

# Convolutions whose forward is the plain convolution (then detectron2's norm and activation);
# subclasses may compute something else (e.g. weight standardisation) and are left alone.
PLAIN_CONVS = (nn.Conv2d, Conv2d)


class Rewritten:
    """Mixin of the modules that a rewrite makes: their children are not rewritten again (by
    a later rewrite or a second ``optimize_for_inference``), since the module computes them
    its own way."""


def replace_modules(model: nn.Module, replacement) -> int:
    """Replace every submodule ``m`` for which ``replacement(m)`` is not None by it; returns
    how many were replaced. Plain lists of submodules that a forward iterates over (detectron2's
    FPN keeps its ``lateral_convs`` and ``output_convs`` so) are updated too."""
    replaced = 0
    for parent in list(model.modules()):
        if isinstance(parent, Rewritten):
            continue
        for name, child in list(parent.named_children()):
            new = replacement(child)
            if new is None:
                continue
            setattr(parent, name, new)
            for attribute in vars(parent).values():
                if isinstance(attribute, list):
                    attribute[:] = [new if item is child else item for item in attribute]
            replaced += 1
    return replaced
