"""Error-message helpers shared by the loaders of weights and checkpoints."""

__all__ = ["abbreviate_keys"]


def abbreviate_keys(keys, limit=6):
    """The first ``limit`` of ``keys``, comma-separated, and how many more there are: enough to
    recognise a mismatch without flooding the error message."""
    shown = ", ".join(keys[:limit])
    return shown + (f", ... ({len(keys) - limit} more)" if len(keys) > limit else "")
