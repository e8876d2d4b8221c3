"""Where frames come from: image files, folders of images, video files, cameras and streams,
each opened by OpenCV (with its FFmpeg back-end for files and URLs).

:func:`open_source` checks a source when it is opened, so that a missing file, a stream that
does not open or an absent camera is an error that names it before anything is written.
"""

import dataclasses
import os
import time

import cv2
import numpy as np

__all__ = ["IMAGE_SUFFIXES", "Frame", "SourceError", "open_source"]

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff", ".webp")


class SourceError(OSError):
    """A source that exists but cannot be opened or read (a stream, a camera, a video)."""


@dataclasses.dataclass
class Frame:
    """One image of a source, as read."""

    index: int  # of the frame in its source, counting frames that were dropped
    timestamp: float | None  # seconds from the source's start; None for image files
    image: np.ndarray  # (H, W, 3) uint8 BGR, as OpenCV reads it
    name: str  # the image file, or the source
    captured: float  # time.perf_counter() when it was read: latency counts from here


class _Images:
    """Image files, read in the order given."""

    live = False

    def __init__(self, name, paths):
        self.name = name
        self.paths = paths
        self.frame_rate = None
        unreadable = [p for p in paths if not cv2.haveImageReader(p)]
        if unreadable:
            raise SourceError(f"{unreadable[0]}: not a readable image file")

    def read(self):
        for index, path in enumerate(self.paths):
            image = cv2.imread(path, cv2.IMREAD_COLOR)
            if image is None:
                raise SourceError(f"{path}: not a readable image file")
            yield Frame(index, None, image, path, time.perf_counter())

    def close(self):
        pass


class _Capture:
    """A ``cv2.VideoCapture``: a video file, a camera or a stream URL. Its first frame is read
    when it is opened (an error then, before any output is written) and kept for ``read``.

    A file read as ``live`` is paced at its frame rate, as a camera delivers frames."""

    def __init__(self, name, target, live):
        self.name = name
        self.live = live
        self.capture = cv2.VideoCapture(target)
        if not self.capture.isOpened():
            raise SourceError(f"{name}: OpenCV cannot open it")
        self.frame_rate = self.capture.get(cv2.CAP_PROP_FPS) or None
        self.is_file = isinstance(target, str) and os.path.isfile(target)
        ok, image = self.capture.read()
        if not ok:
            self.capture.release()
            raise SourceError(f"{name}: OpenCV opened it but could not read a frame")
        self._first = (image, time.perf_counter())

    def read(self):
        image, captured = self._first
        start = captured
        # A file's frames are stamped with their position in it, a camera's or stream's with
        # the time they were read since the first.
        period = 1 / self.frame_rate if self.is_file and self.frame_rate else None
        index = 0
        while True:
            timestamp = index * period if period else captured - start
            yield Frame(index, timestamp, image, self.name, captured)
            index += 1
            if self.live and period:  # a file as a camera: the next frame exists at its time
                time.sleep(max(0.0, start + index * period - time.perf_counter()))
            ok, image = self.capture.read()
            if not ok:
                return
            captured = time.perf_counter()

    def close(self):
        self.capture.release()


def _is_camera_index(source):
    return isinstance(source, int) or (isinstance(source, str) and source.isdigit())


def open_source(source, live=None):
    """The frames of ``source``, opened and checked.

    Args:
        source: an image file, a folder of images (sorted by name), a video file, a camera
            index (``0`` or ``"0"``) or a stream URL (``rtsp://``, ``http://``, ... whatever
            the installed OpenCV opens), or a list of image files.
        live: whether frames arrive on their own clock, so that a slow consumer must skip to
            the newest one (dropping the others) instead of reading every frame. Default:
            cameras and URLs are live, files are not; ``True`` for a video file reads it as a
            camera, at its frame rate.

    Returns an object with ``name``, ``live``, ``frame_rate`` (None when unknown),
    ``read()``, a generator of :class:`Frame`, and ``close()``.

    Raises:
        FileNotFoundError: a file or folder that does not exist, or a folder without images.
        SourceError: a file, camera or stream that OpenCV cannot open or read.
    """
    if isinstance(source, (list, tuple)):
        paths = [os.fspath(p) for p in source]
        missing = [p for p in paths if not os.path.isfile(p)]
        if missing:
            raise FileNotFoundError(f"{missing[0]}: no such file")
        return _Images(", ".join(paths), paths)
    if _is_camera_index(source):
        index = int(source)
        capture = _Capture(f"camera {index}", index, live=True if live is None else live)
        return capture
    source = os.fspath(source)
    if "://" in source:
        return _Capture(source, source, live=True if live is None else live)
    if os.path.isdir(source):
        paths = sorted(
            os.path.join(source, name)
            for name in os.listdir(source)
            if name.lower().endswith(IMAGE_SUFFIXES)
        )
        if not paths:
            raise FileNotFoundError(
                f"{source}: a folder without image files ({', '.join(IMAGE_SUFFIXES)})"
            )
        return _Images(source, paths)
    if not os.path.isfile(source):
        raise FileNotFoundError(f"{source}: no such file or folder")
    if source.lower().endswith(IMAGE_SUFFIXES):
        return _Images(source, [source])
    return _Capture(source, source, live=bool(live))
