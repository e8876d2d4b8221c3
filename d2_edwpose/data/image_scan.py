"""A scan of every image of a dataset before a run reads any, so that a missing, truncated or
mis-sized image stops the run before its first iteration (or is left out, with a report)
instead of failing in a data-loader worker when the loader first reaches it.

The scan accepts what detectron2 accepts: ``read_image`` (Pillow, then the EXIF orientation)
followed by ``check_image_size`` (the record's ``width``/``height`` against the image as read,
so a record with the size before the EXIF rotation, or with width and height swapped, is a
mismatch). It reads headers, not pixels (Pillow opens files lazily), and the end of JPEG and PNG
files: one that does not end as it should (a JPEG without its end-of-image marker, a PNG whose
chunks stop before IEND) is decoded, and reported only if that fails. A file whose pixel data
is damaged but whose header and end are intact passes this scan; ``full_decode`` decodes every
image. A decode is stricter than ``read_image`` in one case: a PNG whose pixel data Pillow
cannot decode, which ``read_image`` returns partly decoded (see :func:`_scan_file`).

It works on detectron2 dataset dicts (``file_name``, ``height``, ``width``, ``image_id``),
whatever registered them. What it learns about each image file is cached, keyed by the file's
path, size, modification and change times, so that a second scan of unchanged files reads
none; the records' sizes are compared with the cached facts on every scan, so an edited
annotation file needs no image to be read again.
"""

import hashlib
import json
import logging
import multiprocessing
import os
import re
import struct
import time
from concurrent.futures import ProcessPoolExecutor, ThreadPoolExecutor, as_completed

import numpy as np
from PIL import Image
from tqdm import tqdm

from detectron2.data import MetadataCatalog
from detectron2.data.detection_utils import convert_PIL_to_numpy
from detectron2.utils import comm

from ..utils.atomic_files import atomic_open
from ..utils.image_files import TRANSPOSING_ORIENTATIONS, exif_orientation
from .image_scan_cache import (
    KEY_COLUMNS,
    ScanCache,
    UnreadableCacheError,
    load_cache,
    save_cache,
    stat_key,
)

__all__ = [
    "ImageScan",
    "ImageScanError",
    "ImageScanResult",
    "default_cache_dir",
    "scan_images",
]

logger = logging.getLogger(__name__)

_JPEG_END = b"\xff\xd9"
_PNG_SIGNATURE_SIZE = 8

# What to do with bad entries (DATASETS.IMAGE_SCAN.BAD_ENTRIES).
BAD_ENTRIES = ("error", "drop")
# Files per task of the worker pool, and the fewest files worth starting the pool for.
_CHUNK_SIZE = 256
_PARALLEL_MIN_FILES = 2 * _CHUNK_SIZE
# The fewest files to read for which a progress bar is shown.
_PROGRESS_MIN_FILES = 2000
# Bad entries named in an error or a warning; the report file holds them all.
_MESSAGE_ENTRIES = 30

# (dataset names, report file, number of bad entries) already warned about in this process.
_warned = set()


class ImageScanError(ValueError):
    """Images of a dataset that detectron2 cannot read as their records say."""


def default_cache_dir():
    """``$XDG_CACHE_HOME/d2_edwpose/image_scan`` (``~/.cache/d2_edwpose/image_scan`` when
    ``XDG_CACHE_HOME`` is unset): a per-user folder, so that datasets are never written to."""
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return os.path.join(base, "d2_edwpose", "image_scan")


def _file_stem(dataset_names):
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", "+".join(dataset_names))[:100]


def _mode(full_decode, image_format):
    return f"decode:{image_format}" if full_decode else "header"


def _cache_file(cache_dir, dataset_names, *, full_decode=False, image_format="BGR"):
    """The cache file of a scan of ``dataset_names``: named after them, with a digest of their
    annotation files and image folders (from their metadata, where registered with them) and
    of the kind of scan, so that datasets registered under one name with other files do not
    share it."""
    sources = []
    for name in dataset_names:
        metadata = MetadataCatalog.get(name)
        sources.append(
            [
                os.path.abspath(path) if path else None
                for path in (metadata.get("json_file"), metadata.get("image_root"))
            ]
        )
    key = json.dumps([_mode(full_decode, image_format), list(dataset_names), sources])
    digest = hashlib.sha1(key.encode()).hexdigest()[:16]
    return os.path.join(cache_dir, f"{_file_stem(dataset_names)}-{digest}.npz")


# ----------------------------------------------------------------------------- one file
def _png_chunk_types(f):
    """The chunk types of a PNG file, from the chunk headers alone, up to IEND or to where the
    file stops."""
    f.seek(_PNG_SIGNATURE_SIZE)
    types = []
    while True:
        header = f.read(8)
        if len(header) < 8:
            return types
        length, chunk_type = struct.unpack(">I4s", header)
        types.append(chunk_type)
        if chunk_type == b"IEND":
            return types
        f.seek(length + 4, os.SEEK_CUR)  # the data and its CRC


def _ends_as_it_should(image_format, f, png_chunks):
    """False for a JPEG without its end-of-image marker and a PNG whose chunks stop before
    IEND: both are usually truncated files, which detectron2 fails to decode (but not always:
    some cameras append data after a JPEG's end, and Pillow decodes a PNG that lacks only its
    IEND chunk), so they are decoded to decide. True for other formats, which are not checked."""
    if image_format in ("JPEG", "MPO"):
        f.seek(-len(_JPEG_END), os.SEEK_END)
        return f.read() == _JPEG_END
    if image_format == "PNG":
        return png_chunks[-1:] == [b"IEND"]
    return True


def _scan_file(path, full_decode, image_format):
    """``(stat key or None, [width, height, orientation], problem or None)`` for one file:
    the size detectron2 reads it at (after the EXIF orientation) or why it cannot.

    A decode is strict: Pillow's ``load()`` must succeed. detectron2's ``read_image`` can miss
    a decode error in a PNG: its EXIF lookup decodes the PNG, takes an error there for "no
    EXIF", and Pillow then hands over the partly decoded image without a second error.
    """
    try:
        f = open(path, "rb")
    except FileNotFoundError:
        return None, None, "missing: no such file"
    except OSError as e:
        return None, None, f"cannot be opened: {type(e).__name__}: {e}"
    with f:
        key = stat_key(os.fstat(f.fileno()))
        try:
            image = Image.open(f)
            width, height = image.size
            png_chunks = _png_chunk_types(f) if image.format == "PNG" else []
            complete = _ends_as_it_should(image.format, f, png_chunks)
        except Exception as e:
            return key, None, f"not an image Pillow can read: {type(e).__name__}: {e}"
        # Pillow's getexif() decodes a PNG to find an eXIf chunk after its pixel data.
        late_exif = image.format == "PNG" and "exif" not in image.info and b"eXIf" in png_chunks
        if full_decode or not complete or late_exif:
            try:
                image.load()
                convert_PIL_to_numpy(image, image_format)
            except Exception as e:
                return key, None, f"truncated or corrupt: {type(e).__name__}: {e}"
        has_exif = image.format != "PNG" or "exif" in image.info
        orientation = exif_orientation(image) if has_exif else 0
    if orientation in TRANSPOSING_ORIENTATIONS:
        width, height = height, width
    return key, (width, height, orientation), None


def _scan_files(paths, full_decode, image_format):
    return [(path, *_scan_file(path, full_decode, image_format)) for path in paths]


# ----------------------------------------------------------------------------- many files
def _num_workers():
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        return os.cpu_count() or 1


def _executor(num_workers):
    """Processes, as Pillow parses headers in Python under the GIL; forked, as DataLoader
    workers are, so that they start at once and need nothing pickled but file names. Threads
    where forking is not available, or in a daemonic process (which cannot have children)."""
    if "fork" in multiprocessing.get_all_start_methods() and not (
        multiprocessing.current_process().daemon
    ):
        return ProcessPoolExecutor(num_workers, mp_context=multiprocessing.get_context("fork"))
    return ThreadPoolExecutor(num_workers)


def _read_files(paths, full_decode, image_format, num_workers, description):
    """``_scan_file`` of every path, in their order: in parallel for many, with a progress bar
    for more."""
    num_workers = _num_workers() if num_workers is None else num_workers
    if num_workers <= 1 or len(paths) < _PARALLEL_MIN_FILES:
        return _scan_files(paths, full_decode, image_format)
    chunks = [paths[i : i + _CHUNK_SIZE] for i in range(0, len(paths), _CHUNK_SIZE)]
    progress = tqdm(
        total=len(paths),
        desc=f"Scanning {description}",
        unit="img",
        mininterval=1.0,
        disable=len(paths) < _PROGRESS_MIN_FILES,
    )
    with progress, _executor(min(num_workers, len(chunks))) as executor:
        futures = [
            executor.submit(_scan_files, chunk, full_decode, image_format) for chunk in chunks
        ]
        for future in as_completed(futures):
            progress.update(len(future.result()))
    return [result for future in futures for result in future.result()]


def _load_cache(cache_file, mode):
    try:
        return load_cache(cache_file, mode)
    except UnreadableCacheError as e:
        logger.warning(f"Ignoring the image-scan cache {cache_file}, which cannot be read: {e}")
        return ScanCache()


def _save_cache(cache_file, mode, cache):
    try:
        save_cache(cache_file, mode, cache)
    except OSError as e:
        logger.warning(
            f"Cannot write the image-scan cache {cache_file} ({type(e).__name__}: {e}): the next "
            "run reads every image again. Set DATASETS.IMAGE_SCAN.CACHE_DIR to a writable folder."
        )


def _files_of_records(dataset_dicts):
    """``({file name: index}, index of each record's file)`` of the records' distinct local
    files, named as ``str`` (a record may hold a ``Path``); -1 for a record without a
    ``file_name`` or with a URL (``scheme://``) for one."""
    index_of = {}
    files = []
    for record in dataset_dicts:
        path = record.get("file_name")
        if path is not None:
            path = os.fspath(path)
        if path is None or "://" in path:
            files.append(-1)
        else:
            files.append(index_of.setdefault(path, len(index_of)))
    return index_of, files


def _size_problem(record, size, orientation):
    """What ``check_image_size`` would reject, with the likely cause."""
    if "width" not in record and "height" not in record:
        return None
    expected = (record.get("width"), record.get("height"))
    width, height = size
    if expected == (width, height):
        return None
    says = f"the record says {expected[0]}x{expected[1]}"
    if expected == (height, width) and orientation in TRANSPOSING_ORIENTATIONS:
        return (
            f"size: {says}, the file's size before its EXIF orientation {orientation}, which "
            f"detectron2 applies: it reads the image as {width}x{height} (width x height); set "
            f"width {width}, height {height}"
        )
    if expected == (height, width):
        return (
            f"size: detectron2 reads the image as {width}x{height} (width x height), {says}: "
            "width and height are swapped in the record"
        )
    return f"size: detectron2 reads the image as {width}x{height} (width x height), {says}"


class ImageScanResult:
    """What :func:`scan_images` found.

    Attributes:
        problems (dict[int, str]): index of each bad record in the scanned list -> what is wrong.
        num_files (int): distinct image files of the records.
        num_read (int): files read (the others' facts came from the cache).
        num_unscanned (int): files with a URL for a name (``scheme://``), left to detectron2's
            ``PathManager`` and not scanned.
        seconds (float): wall time of the scan.
    """

    def __init__(self, problems, num_files, num_read, num_unscanned, seconds):
        self.problems = problems
        self.num_files = num_files
        self.num_read = num_read
        self.num_unscanned = num_unscanned
        self.seconds = seconds


def scan_images(
    dataset_dicts,
    *,
    full_decode=False,
    image_format="BGR",
    cache_file=None,
    num_workers=None,
    description="images",
):
    """Check that every record's ``file_name`` is an image that detectron2 reads, at the
    record's ``width`` x ``height`` if it has them (see the module docstring).

    Args:
        dataset_dicts (list[dict]): detectron2 dataset dicts.
        full_decode (bool): decode every image (and convert it to ``image_format``, as
            ``read_image`` does), not only those whose file does not end as it should.
        image_format (str): the format the images are decoded to (``INPUT.FORMAT``).
        cache_file (str or None): where the facts found about the files are kept between
            scans (None: nowhere). Rewritten atomically when they change; a file that cannot
            be written is a warning.
        num_workers (int or None): processes reading the files; default: the CPUs available
            to this process.
        description (str): what is scanned, for the progress bar.

    Returns:
        ImageScanResult
    """
    start = time.perf_counter()
    mode = _mode(full_decode, image_format)
    index_of, file_of_record = _files_of_records(dataset_dicts)
    paths = list(index_of)
    # The cache's names: absolute, for names relative to the working directory (not
    # normalized: another spelling of a name only misses the cache).
    cwd = os.getcwd()
    names = [path if os.path.isabs(path) else os.path.join(cwd, path) for path in paths]
    cache = _load_cache(cache_file, mode)
    rows = cache.holding(names, paths)
    # Each good file's width, height and orientation. In arrays and lists of ints, which the
    # garbage collector does not track: a list or tuple per file would have it walk every
    # object of the process, the records included, several times over.
    found = np.full((len(paths), 3), -1, np.int64)
    found[rows >= 0] = cache.facts[rows[rows >= 0], KEY_COLUMNS:]
    to_read = [paths[file] for file in np.flatnonzero(rows < 0)]
    read, problems_by_file = {}, {}
    for path, key, facts, problem in _read_files(
        to_read, full_decode, image_format, num_workers, description
    ):
        file = index_of[path]
        if problem is None:
            found[file] = facts
            read[names[file]] = key + facts
        else:
            problems_by_file[file] = problem
    if cache_file is not None and to_read:
        # Entries of files not in this scan are kept: a training set scanned after detectron2
        # removed its images without people shares the cache file of the whole set.
        entries = cache.entries()
        updated = {**entries, **read}
        for file in problems_by_file:
            # Not cached: a read error may be transient, and bad files are few.
            updated.pop(names[file], None)
        if updated != entries:
            _save_cache(cache_file, mode, ScanCache.from_entries(updated))

    widths, heights, orientations = found.T.tolist()
    problems = {}
    num_unscanned = 0
    for index, (record, file) in enumerate(zip(dataset_dicts, file_of_record)):
        if file < 0:
            if record.get("file_name") is None:
                problems[index] = "the record has no file_name"
            else:
                num_unscanned += 1
        elif file in problems_by_file:
            problems[index] = problems_by_file[file]
        else:
            width, height = widths[file], heights[file]
            if record.get("width") != width or record.get("height") != height:
                problem = _size_problem(record, (width, height), orientations[file])
                if problem is not None:
                    problems[index] = problem
    return ImageScanResult(
        problems, len(paths), len(to_read), num_unscanned, time.perf_counter() - start
    )


# ----------------------------------------------------------------------------- the policy
class ImageScan:
    """The scan of the images of a run's datasets (``DATASETS.IMAGE_SCAN``), and what is done
    with the bad entries it finds: an :class:`ImageScanError` listing them (``"error"``) or the
    records without them (``"drop"``, with one warning), and a report file listing them all.

    In a job of several processes, the first process of each machine scans (so that every
    machine's files are checked, each once), and all processes take the union of what they
    found, so that they all keep the same records.
    """

    def __init__(
        self,
        *,
        enabled=True,
        bad_entries="error",
        full_decode=False,
        image_format="BGR",
        cache_dir="",
        report_dir=None,
    ):
        """
        Args:
            enabled (bool): False: return the records unchanged.
            bad_entries (str): "error" or "drop".
            full_decode, image_format: as for :func:`scan_images`.
            cache_dir (str): folder of the cache files; "" for :func:`default_cache_dir`.
            report_dir (str or None): folder of the report files; None: no report.
        """
        if bad_entries not in BAD_ENTRIES:
            raise ValueError(
                f"DATASETS.IMAGE_SCAN.BAD_ENTRIES={bad_entries!r} is invalid (ImageScan's "
                "bad_entries): expected 'error' (stop before training, listing them) or 'drop' "
                "(leave them out, with a warning)"
            )
        self.enabled = enabled
        self.bad_entries = bad_entries
        self.full_decode = full_decode
        self.image_format = image_format
        self.cache_dir = cache_dir or default_cache_dir()
        self.report_dir = report_dir

    @classmethod
    def from_config(cls, cfg):
        scan = cfg.DATASETS.IMAGE_SCAN
        return cls(
            enabled=scan.ENABLED,
            bad_entries=scan.BAD_ENTRIES,
            full_decode=scan.FULL_DECODE,
            image_format=cfg.INPUT.FORMAT,
            cache_dir=scan.CACHE_DIR,
            report_dir=os.path.join(cfg.OUTPUT_DIR, "image_scan"),
        )

    def _scan(self, dataset_dicts, dataset_names):
        cache_file = _cache_file(
            self.cache_dir,
            dataset_names,
            full_decode=self.full_decode,
            image_format=self.image_format,
        )
        described = ", ".join(dataset_names)
        result = scan_images(
            dataset_dicts,
            full_decode=self.full_decode,
            image_format=self.image_format,
            cache_file=cache_file,
            description=f"the images of {described}",
        )
        logger.info(
            f"Scanned the {result.num_files} images of {described} in {result.seconds:.2f} s "
            f"({'decoded' if self.full_decode else 'headers'}; {result.num_read} read, "
            f"{result.num_files - result.num_read} from the cache {cache_file}): "
            f"{len(result.problems)} bad."
        )
        if result.num_unscanned:
            logger.info(
                f"{described}: {result.num_unscanned} images named by a URL are not scanned."
            )
        return result.problems

    def _write_report(self, dataset_dicts, dataset_names, problems):
        if self.report_dir is None:
            return None
        path = os.path.join(self.report_dir, f"{_file_stem(dataset_names)}.json")
        if comm.get_local_rank() == 0:
            report = {
                "datasets": list(dataset_names),
                "images": len(dataset_dicts),
                "full_decode": self.full_decode,
                "bad_entries": self.bad_entries,
                "bad": [
                    {
                        "file_name": dataset_dicts[index].get("file_name"),
                        "image_id": dataset_dicts[index].get("image_id"),
                        "problem": problem,
                    }
                    for index, problem in sorted(problems.items())
                ],
            }
            with atomic_open(path, "w") as f:
                json.dump(report, f, indent=1)
                f.write("\n")
        return path

    def __call__(self, dataset_dicts, dataset_names):
        """The records of ``dataset_dicts`` (of the datasets ``dataset_names``) to use: all of
        them when every image is good; else without the bad ones (``"drop"``), or an
        :class:`ImageScanError` naming them (``"error"``). Call it in every process of a job."""
        if not self.enabled:
            return dataset_dicts
        dataset_names = list(dataset_names)
        found = self._scan(dataset_dicts, dataset_names) if comm.get_local_rank() == 0 else None
        problems = {}
        for machine_problems in comm.all_gather(found):
            for index, problem in (machine_problems or {}).items():
                problems.setdefault(index, problem)
        if not problems:
            return dataset_dicts
        report = self._write_report(dataset_dicts, dataset_names, problems)
        comm.synchronize()  # the report is written before any process stops on it
        entries = [
            f"  {dataset_dicts[i].get('file_name')} (image_id {dataset_dicts[i].get('image_id')}): "
            f"{problem}"
            for i, problem in sorted(problems.items())
        ]
        if len(entries) > _MESSAGE_ENTRIES:
            more = len(entries) - _MESSAGE_ENTRIES
            entries = entries[:_MESSAGE_ENTRIES] + [f"  ... and {more} more"]
        listed = f"All {len(problems)} are listed in {report}." if report else ""
        datasets = ", ".join(f"'{name}'" for name in dataset_names)
        found_where = (
            f"{len(problems)} of the {len(dataset_dicts)} images of dataset {datasets} cannot be "
            "read as their records say"
        )
        if self.bad_entries == "error":
            raise ImageScanError(
                f"{found_where}:\n" + "\n".join(entries) + f"\n{listed} Fix or remove these "
                "files or their records, or set DATASETS.IMAGE_SCAN.BAD_ENTRIES 'drop' to leave "
                "them out (with a warning)."
            )
        kept = [record for index, record in enumerate(dataset_dicts) if index not in problems]
        seen = (tuple(dataset_names), report, len(problems))
        log = logger.info if seen in _warned else logger.warning
        _warned.add(seen)
        log(
            f"{found_where}; leaving them out (DATASETS.IMAGE_SCAN.BAD_ENTRIES 'drop'), "
            f"{len(kept)} remain. {listed}\n" + "\n".join(entries)
        )
        return kept
