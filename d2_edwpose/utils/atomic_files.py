"""Writing files atomically: a file appears under its name only once it is complete, so that a
job killed or failing while writing never leaves a truncated checkpoint, dataset file, export
or drawing where a reader expects a whole one."""

import contextlib
import os
import secrets

__all__ = ["atomic_open", "atomic_path"]


def _fsync(path, flags):
    descriptor = os.open(path, flags)
    try:
        os.fsync(descriptor)
    finally:
        os.close(descriptor)


@contextlib.contextmanager
def atomic_path(path):
    """Yield a temporary path in the folder of ``path`` (created if missing), for a writer that
    takes a file name (OpenCV's); once the block completes, the file written there is flushed to disk and renamed
    over ``path`` (``os.replace`` is atomic).

    The temporary name keeps the suffix of ``path``, as OpenCV picks the format by it. If the
    block fails, the temporary file is removed and ``path`` is left as it was; a killed process
    leaves a hidden ``.<name>.<random>.tmp<suffix>`` file, which can be deleted.
    """
    directory, name = os.path.split(os.path.abspath(path))
    suffix = os.path.splitext(name)[1]
    temporary = os.path.join(directory, f".{name}.{secrets.token_hex(4)}.tmp{suffix}")
    os.makedirs(directory, exist_ok=True)
    try:
        yield temporary
        _fsync(temporary, os.O_RDWR)
        os.replace(temporary, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.remove(temporary)
        raise
    if os.name == "posix":  # make the rename itself durable, e.g. across a power cut
        _fsync(directory, os.O_RDONLY)


@contextlib.contextmanager
def atomic_open(path, mode, **kwargs):
    """``open(path, mode)`` for writing ("w" or "wb"), through :func:`atomic_path`: ``path``
    holds either its previous content or all that the block wrote."""
    with atomic_path(path) as temporary:
        # "x": a new file, with the permissions open() gives (unlike tempfile's 0600).
        with open(temporary, "x" + mode[1:], **kwargs) as f:
            yield f
