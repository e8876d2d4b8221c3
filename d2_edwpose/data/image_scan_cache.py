"""The cache of the image scan (:mod:`.image_scan`): what it learned about each image file, by
the file's absolute name, with the file's size, modification and change times when it was read.

A re-scan of unchanged files reads none of them but still looks up every one (``os.stat``),
to compare its key with its entry's. The rest is kept small beside those look-ups: the cache is
one ``.npz`` file of the names (one NUL-separated string) and the facts (an integer matrix),
which loads without a parse per entry; a re-scan of the same records finds the entries in the
order of its files, without a look-up per name; and the keys are compared as arrays.
"""

import os
import zipfile

import numpy as np

from ..utils.atomic_files import atomic_open

__all__ = [
    "ScanCache",
    "UnreadableCacheError",
    "load_cache",
    "save_cache",
    "stat_key",
    "stat_keys",
]

# Bump when what is cached, or how it is found, changes: older cache files are then ignored.
_CACHE_VERSION = 2
# The columns of ScanCache.facts: the file's key, then what the scan found in it.
KEY_COLUMNS = 3  # size, modification time, change time (ns)
FACT_COLUMNS = KEY_COLUMNS + 3  # and width, height (as detectron2 reads it), EXIF orientation
# Separates the names in the cache file: the one character no file name contains.
_NAME_SEPARATOR = "\0"


def stat_key(stat):
    """``(size, mtime_ns, ctime_ns)`` of an ``os.stat`` result: a cache entry holds while the
    file's key is the one it was read with."""
    # The change time too: tools that edit a file in place can keep its size and restore its
    # modification time (exiftool -P rewriting the orientation), never its change time.
    return stat.st_size, stat.st_mtime_ns, stat.st_ctime_ns


def stat_keys(paths):
    """The :func:`stat_key` of each file, as an ``(n, KEY_COLUMNS)`` int64 array; -1 for a file
    that cannot be looked up (no file's key is -1, so its cache entry, if any, does not hold)."""
    missing = (-1,) * KEY_COLUMNS
    # One flat list of ints, which the garbage collector does not track: a list of tuples
    # would make it walk every object of the process, a dataset's records included.
    keys = []
    for path in paths:
        try:
            keys.extend(stat_key(os.stat(path)))
        except OSError:
            keys.extend(missing)
    return np.array(keys, np.int64).reshape(-1, KEY_COLUMNS)


class ScanCache:
    """What the scan found about files: ``facts[i]`` (see ``FACT_COLUMNS``) of ``names[i]``."""

    def __init__(self, names=(), facts=None):
        self.names = list(names)
        self.facts = (
            np.empty((0, FACT_COLUMNS), np.int64) if facts is None else np.asarray(facts, np.int64)
        )

    def rows(self, names):
        """The row of each of ``names`` in ``facts``, as an int64 array; -1 for a name without
        an entry."""
        if names == self.names:  # the usual re-scan: the files of the last one, in its order
            return np.arange(len(names), dtype=np.int64)
        row_of = dict(zip(self.names, range(len(self.names))))
        return np.array([row_of.get(name, -1) for name in names], np.int64)

    def holding(self, names, paths):
        """The row in ``facts`` of each file's entry where it holds (the file's key is the cached
        one), else -1: a file to read. ``names`` are the files' names in the cache, ``paths``
        the names to look them up by."""
        rows = self.rows(names)
        cached = np.flatnonzero(rows >= 0)
        keys = stat_keys([paths[i] for i in cached])
        changed = (keys != self.facts[rows[cached], :KEY_COLUMNS]).any(axis=1)
        rows[cached[changed]] = -1
        return rows

    def entries(self):
        """``{name: facts as a tuple}``, to be edited and given to :meth:`from_entries`."""
        return dict(zip(self.names, map(tuple, self.facts.tolist())))

    @classmethod
    def from_entries(cls, entries):
        """The cache of ``{name: facts}`` (as :meth:`entries` gives)."""
        facts = np.array(list(entries.values()), np.int64).reshape(-1, FACT_COLUMNS)
        return cls(entries, facts)


class UnreadableCacheError(ValueError):
    """A cache file that is not one :func:`save_cache` wrote (damaged, or of something else)."""


def load_cache(cache_file, mode):
    """The :class:`ScanCache` in ``cache_file``: empty if there is none, or if it holds a scan of
    another ``mode`` or by another version of the scan.

    Raises:
        UnreadableCacheError: if the file cannot be read as a cache.
    """
    if cache_file is None or not os.path.isfile(cache_file):
        return ScanCache()
    try:
        with np.load(cache_file, allow_pickle=False) as arrays:
            if arrays["version"] != _CACHE_VERSION or arrays["mode"] != mode:
                return ScanCache()
            names = os.fsdecode(arrays["names"].tobytes())
            facts = arrays["facts"]
        names = names.split(_NAME_SEPARATOR) if names else []
        if facts.shape != (len(names), FACT_COLUMNS):
            raise ValueError(f"{len(names)} names, facts of shape {facts.shape}")
    except (OSError, ValueError, KeyError, EOFError, zipfile.BadZipFile) as e:
        raise UnreadableCacheError(f"{type(e).__name__}: {e}") from e
    return ScanCache(names, facts)


def save_cache(cache_file, mode, cache):
    """Write ``cache``, a scan of ``mode``, to ``cache_file`` atomically (an ``OSError`` if it
    cannot be written)."""
    names = os.fsencode(_NAME_SEPARATOR.join(cache.names))
    with atomic_open(cache_file, "wb") as f:
        np.savez(
            f,
            version=np.int64(_CACHE_VERSION),
            mode=np.str_(mode),
            names=np.frombuffer(names, np.uint8),
            facts=cache.facts,
        )
