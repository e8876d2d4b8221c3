"""Poses of every frame of a source, with the stages of the runner overlapped in threads.

``stream_poses`` (``OnnxPoseRunner.stream``) runs three stages at once: reading and
pre-processing a frame, the graph on the previous one, and post-processing, tracking and
whatever the caller does (drawing, encoding: ``PoseWriter``) on the one before. numpy,
OpenCV and both runtimes release the GIL in their loops, so that the stages use the cores
together. Files are processed frame by frame, every frame; a live source (a camera, a stream)
never falls behind: the graph takes the newest frame when it is free, and the frames it
skipped are counted (``PoseFrame.dropped``).

``PoseWriter`` writes what ``python -m pose_runner ... --output DIR`` writes: the drawn video
(or images) and JSON Lines, one line per frame (``pose_record``, ``read_json_lines``), each
complete and readable up to the last frame processed, also when the run is interrupted.
"""

import collections
import dataclasses
import json
import os
import queue
import threading
import time

import cv2
import numpy as np

from .drawing import draw_poses
from .sources import open_source
from .tracking import PoseTracker

__all__ = ["PoseFrame", "PoseWriter", "pose_record", "read_json_lines", "stream_poses"]


@dataclasses.dataclass
class PoseFrame:
    """The poses of one frame of a source."""

    index: int  # of the frame in its source (live sources skip the dropped ones)
    timestamp: float | None  # seconds from the source's start; None for image files
    name: str  # the image file, or the source
    image: np.ndarray  # the frame (BGR)
    # The runner's dict (boxes, scores, classes, keypoints) and, when tracked, track_ids.
    poses: dict
    dropped: int  # frames of a live source skipped so far, to keep up with it
    latency: float  # seconds from reading the frame to its poses


_END = object()
# How long a blocked stage waits before it checks whether the stream was stopped.
_POLL = 0.1


class _Failure:
    def __init__(self, error):
        self.error = error


def _get(channel, stop):
    """The next item of ``channel``, or None once the stream is stopped."""
    while not stop.is_set():
        try:
            return channel.get(timeout=_POLL)
        except queue.Empty:
            pass
    return None


def _put(channel, item, stop):
    """Put ``item`` unless the stream is stopped first; whether it was put."""
    while not stop.is_set():
        try:
            channel.put(item, timeout=_POLL)
            return True
        except queue.Full:
            pass
    return False


class _NewestFrame:
    """The newest frame of a live source: a new frame replaces one not taken yet, which is
    counted as dropped. The end (or a failure) of the source is kept apart, so that it never
    replaces the last frame: it is taken after it."""

    def __init__(self):
        self._condition = threading.Condition()
        self._frame = None
        self._end = None
        self.dropped = 0

    def put(self, item, stop):
        with self._condition:
            if item is _END or isinstance(item, _Failure):
                self._end = item
            else:
                if self._frame is not None:
                    self.dropped += 1
                self._frame = item
            self._condition.notify()
        return True

    def take(self, stop):
        """The newest frame (the end, for good, once the last frame was taken), and the
        frames dropped so far; None once the stream is stopped."""
        with self._condition:
            while self._frame is None and self._end is None and not stop.is_set():
                self._condition.wait(_POLL)
            if self._frame is not None:
                item, self._frame = self._frame, None
            else:
                item = self._end
            return item, self.dropped


def stream_poses(
    runner,
    source,
    score_threshold=None,
    tracker="bytetrack",
    live=None,
    smoothing=None,
    tracker_options=None,
):
    """A generator of :class:`PoseFrame`, one per frame of ``source``, in order.

    Args:
        runner: an :class:`~.onnx_pose_runner.OnnxPoseRunner`.
        source: what :func:`~.sources.open_source` opens (a file, a folder, a video, a camera
            index, a URL), or a source it opened.
        score_threshold: as for the runner's call.
        tracker: a name of :data:`~.tracking.TRACKERS`, a :class:`~.tracking.PoseTracker`, or
            None for no track ids.
        live: as for :func:`~.sources.open_source`.
        smoothing, tracker_options: with a tracker name, :class:`~.tracking.PoseTracker`'s
            ``smoothing`` and ``options``.

    The source is opened (and the tracker built) when this is called, so that a source that
    cannot be read is an error here, before the first frame. Closing the generator (leaving
    a ``for`` loop, an exception, Ctrl-C) stops the stages and releases the source.
    """
    opened = source if hasattr(source, "read") else open_source(source, live)
    try:
        if isinstance(tracker, str):
            tracker = PoseTracker(
                tracker,
                frame_rate=opened.frame_rate or 30.0,
                options=tracker_options,
                smoothing=smoothing,
            )
    except BaseException:
        opened.close()
        raise
    return _stream(runner, opened, score_threshold, tracker)


def _stream(runner, source, score_threshold, tracker):
    stop = threading.Event()
    # Frames of a file wait, pre-processed, for the graph; a live source keeps only the newest.
    frames = _NewestFrame() if source.live else queue.Queue(maxsize=2)
    results = queue.Queue(maxsize=2)

    def read():
        try:
            for frame in source.read():
                if source.live:  # pre-processed by the graph's stage, if it is not dropped
                    frames.put((frame, None), stop)
                elif not _put(frames, (frame, runner.preprocess(frame.image)), stop):
                    return
                if stop.is_set():
                    return
            item = _END
        except BaseException as e:  # handed to the caller's thread, raised there
            item = _Failure(e)
        if source.live:
            frames.put(item, stop)
        else:
            _put(frames, item, stop)

    def infer():
        try:
            while True:
                item, dropped = frames.take(stop) if source.live else (_get(frames, stop), 0)
                if item is None:  # stopped while waiting
                    return
                if item is _END or isinstance(item, _Failure):
                    _put(results, item, stop)
                    return
                frame, graph_input = item
                if graph_input is None:
                    graph_input = runner.preprocess(frame.image)
                if not _put(results, (frame, runner.run_graph(graph_input), dropped), stop):
                    return
        except BaseException as e:
            _put(results, _Failure(e), stop)

    threads = [
        threading.Thread(target=read, name="pose-stream-read", daemon=True),
        threading.Thread(target=infer, name="pose-stream-infer", daemon=True),
    ]
    for thread in threads:
        thread.start()
    try:
        while True:
            item = results.get()
            if item is _END:
                return
            if isinstance(item, _Failure):
                raise item.error
            frame, outputs, dropped = item
            poses = runner.postprocess(outputs, frame.image.shape[:2], score_threshold)
            if tracker is not None:
                poses = tracker.update(poses, frame.timestamp)
            yield PoseFrame(
                frame.index,
                frame.timestamp,
                frame.name,
                frame.image,
                poses,
                dropped,
                time.perf_counter() - frame.captured,
            )
    finally:
        stop.set()
        for thread in threads:
            thread.join(timeout=5)
        source.close()


def pose_record(frame):
    """The JSON Lines record of a :class:`PoseFrame`: ``source``, ``index``, ``timestamp``
    (seconds, null for image files), ``width``, ``height``, ``dropped`` and ``people``, each
    with ``track_id`` (null when not tracked), ``box`` (x0, y0, x1, y1), ``score`` and
    ``keypoints`` ([x, y, score] per keypoint, in the export's keypoint order), in pixels of
    the frame."""
    poses = frame.poses
    track_ids = poses.get("track_ids")
    people = [
        {
            "track_id": None if track_ids is None or track_ids[i] < 0 else int(track_ids[i]),
            "box": [float(v) for v in poses["boxes"][i]],
            "score": float(poses["scores"][i]),
            "keypoints": poses["keypoints"][i].tolist(),
        }
        for i in range(len(poses["scores"]))
    ]
    height, width = frame.image.shape[:2]
    return {
        "source": frame.name,
        "index": frame.index,
        "timestamp": frame.timestamp,
        "width": width,
        "height": height,
        "dropped": frame.dropped,
        "people": people,
    }


_RECORD_FIELDS = ("source", "index", "timestamp", "width", "height", "dropped", "people")
_PERSON_FIELDS = ("track_id", "box", "score", "keypoints")


def read_json_lines(path):
    """The records of a JSON Lines file written by :class:`PoseWriter`, checked against the
    schema of :func:`pose_record` (a ValueError naming the line otherwise)."""
    records = []
    with open(path) as f:
        for number, line in enumerate(f, 1):
            try:
                record = json.loads(line)
            except json.JSONDecodeError as e:
                raise ValueError(f"{path}:{number}: not a JSON line ({e})") from None
            if not isinstance(record, dict) or sorted(record) != sorted(_RECORD_FIELDS):
                raise ValueError(f"{path}:{number}: expected the fields {list(_RECORD_FIELDS)}")
            for person in record["people"]:
                if sorted(person) != sorted(_PERSON_FIELDS) or len(person["box"]) != 4:
                    raise ValueError(
                        f"{path}:{number}: a person has not the fields {list(_PERSON_FIELDS)}"
                    )
            records.append(record)
    return records


class PoseWriter:
    """Writes the frames of one source into a folder, in a thread of its own: the drawn video
    ``STEM.mp4`` (or, for image files, each drawn image under its own name) and
    ``STEM.jsonl``. Each JSON line is flushed when written; the video is written as
    ``STEM.partial.mp4`` and renamed when closed (MPEG-4 is playable once its index is
    written), so that after ``close()``, also after Ctrl-C, both hold every frame written.

    Args:
        folder: the output folder (created).
        stem: the name of the outputs, without suffix.
        video: whether to write a video (False for image files: drawn images instead).
        frame_rate: of the video (None: 30).
        edges: the skeleton to draw (:func:`~.drawing.skeleton_edges`).
        keep_drawn: keep the newest drawn frame in ``drawn`` (for a window to show it).
    """

    def __init__(self, folder, stem, video, frame_rate=None, edges=(), keep_drawn=False):
        os.makedirs(folder, exist_ok=True)
        self.json_path = os.path.join(folder, f"{stem}.jsonl")
        self.video_path = os.path.join(folder, f"{stem}.mp4") if video else None
        # OpenCV picks the container by the suffix: the partial file keeps ".mp4".
        self._partial = os.path.join(folder, f"{stem}.partial.mp4")
        self.folder = folder
        self.frame_rate = frame_rate or 30.0
        self.edges = edges
        self.keep_drawn = keep_drawn
        self.drawn = None
        self.images = []
        self._json = open(self.json_path, "w")
        self._video = None
        self._queue = queue.Queue(maxsize=4)
        self._error = None
        self._times = collections.deque(maxlen=30)
        self._thread = threading.Thread(target=self._run, name="pose-writer", daemon=True)
        self._thread.start()

    def write(self, frame):
        """Queue a :class:`PoseFrame` to be drawn and written (in order)."""
        if self._error is not None:
            raise self._error
        self._times.append(time.perf_counter())
        fps = (
            (len(self._times) - 1) / (self._times[-1] - self._times[0])
            if len(self._times) > 1
            else 0.0
        )
        self._queue.put((frame, fps))

    def _run(self):
        while True:
            item = self._queue.get()
            if item is None:
                return
            if self._error is not None:
                continue
            try:
                self._write(*item)
            except BaseException as e:  # raised in the caller's thread by write() and close()
                self._error = e

    def _write(self, frame, fps):
        status = f"{fps:.1f} FPS  latency {1000 * frame.latency:.0f} ms" if fps else ""
        if frame.dropped:
            status += f"  {frame.dropped} dropped"
        drawn = draw_poses(frame.image, frame.poses, self.edges, status)
        if self.video_path is None:
            path = os.path.join(self.folder, os.path.basename(frame.name))
            if not cv2.imwrite(path, drawn):
                raise OSError(f"{path}: OpenCV could not write this image")
            self.images.append(path)
        else:
            if self._video is None:
                height, width = drawn.shape[:2]
                self._video = cv2.VideoWriter(
                    self._partial, cv2.VideoWriter_fourcc(*"mp4v"), self.frame_rate, (width, height)
                )
                if not self._video.isOpened():
                    raise OSError(f"{self.video_path}: OpenCV cannot write an MPEG-4 video")
            self._video.write(drawn)
        self._json.write(json.dumps(pose_record(frame)) + "\n")
        self._json.flush()
        if self.keep_drawn:
            self.drawn = drawn

    def close(self):
        """Write what is queued, then close the files (the video renamed to ``STEM.mp4``)."""
        self._queue.put(None)
        self._thread.join()
        self._json.close()
        if self._video is not None:
            self._video.release()
            os.replace(self._partial, self.video_path)
        if self._error is not None:
            raise self._error
