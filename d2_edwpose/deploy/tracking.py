"""Identities across the frames of a video, and optional keypoint smoothing: the one home of
tracking for the runner (``OnnxPoseRunner.stream``) and the PyTorch demo (``tools/demo.py``).

People are tracked by their boxes with a maintained multi-object tracker, Roboflow's
``trackers`` (Apache-2.0; torch-free: numpy, scipy, opencv and ``supervision``): ByteTrack by
default, chosen by identity F1 and id switches on the synthetic crossing clips
(docs/video.md, with the other trackers measured). Keypoints are smoothed, when asked, by a
One Euro filter per tracked person (Casiez, Roussel & Vogel, CHI 2012): a low-pass filter
whose cut-off rises with the keypoint's speed, so that a still person stops jittering and a
moving one lags little.
"""

import math

import numpy as np

__all__ = ["TRACKERS", "TRACKER_OPTIONS", "OneEuroFilter", "PoseTracker", "parse_tracker_options"]

# trackers' classes by name; "bytetrack" is the default (docs/video.md has the comparison).
TRACKERS = {"bytetrack": "ByteTrackTracker", "ocsort": "OCSORTTracker", "sort": "SORTTracker"}
TRACKERS_REQUIREMENT = "trackers==2.6.1"
# ByteTrack's thresholds for the runner's detections (all above the export's score threshold):
# a track starts only from a near-certain person, so that the extra boxes the model finds
# while people overlap do not start tracks, and lower-scored boxes still continue tracks
# through ByteTrack's second association. Chosen on synthetic clips other than those
# reported (docs/video.md).
TRACKER_OPTIONS = {
    "bytetrack": {"high_conf_det_threshold": 0.7, "track_activation_threshold": 0.95}
}


def parse_tracker_options(options):
    """The tracker's keyword arguments of command-line ``KEY=NUMBER`` strings (e.g.
    ``track_activation_threshold=0.7``); ValueError naming one that is not of that form."""
    parsed = {}
    for option in options:
        key, sep, value = option.partition("=")
        try:
            parsed[key] = int(value) if value.isdigit() else float(value)
        except ValueError:
            sep = ""
        if not sep or not key:
            raise ValueError(f"{option!r}: expected KEY=NUMBER")
    return parsed


def _import_trackers():
    try:
        import supervision
        import trackers
    except ImportError as e:
        raise ModuleNotFoundError(
            f"tracking needs Roboflow's 'trackers' package ({e}): pip install "
            f"{TRACKERS_REQUIREMENT}, or run without tracking"
        ) from e
    return trackers, supervision


class OneEuroFilter:
    """The One Euro filter of one sequence of arrays (here a person's (K, 2) keypoints).

    Args:
        min_cutoff: the cut-off frequency (Hz) of a still signal: lower smooths more.
        beta: how fast the cut-off rises with the speed (per pixel per second): higher lags less.
        derivative_cutoff: the cut-off frequency (Hz) of the speed estimate.
    """

    def __init__(self, min_cutoff=1.0, beta=0.05, derivative_cutoff=1.0):
        if min_cutoff <= 0 or beta < 0 or derivative_cutoff <= 0:
            raise ValueError(
                f"OneEuroFilter(min_cutoff={min_cutoff}, beta={beta}, derivative_cutoff="
                f"{derivative_cutoff}): expected min_cutoff > 0, beta >= 0, derivative_cutoff > 0"
            )
        self.min_cutoff = min_cutoff
        self.beta = beta
        self.derivative_cutoff = derivative_cutoff
        self._value = self._speed = self.time = None

    @staticmethod
    def _alpha(cutoff, period):
        tau = 1 / (2 * math.pi * cutoff)
        return 1 / (1 + tau / period)

    def __call__(self, value, time):
        """The filtered ``value`` at ``time`` (seconds, increasing; ``self.time`` is the
        last one)."""
        value = np.asarray(value, dtype=np.float64)
        if self._value is None or time <= self.time:
            self._value, self._speed, self.time = value, np.zeros_like(value), time
            return value.copy()
        period = time - self.time
        speed = (value - self._value) / period
        alpha = self._alpha(self.derivative_cutoff, period)
        self._speed = alpha * speed + (1 - alpha) * self._speed
        cutoff = self.min_cutoff + self.beta * np.abs(self._speed)
        alpha = self._alpha(cutoff, period)
        self._value = alpha * value + (1 - alpha) * self._value
        self.time = time
        return self._value.copy()


class PoseTracker:
    """Track ids for the people of consecutive frames, and optionally smoothed keypoints.

    Args:
        tracker: a name of ``TRACKERS``.
        frame_rate: the video's frames per second (how long a lost person is remembered
            scales with it; frames without a timestamp are this far apart).
        lost_seconds: how long a person who is not detected keeps their id.
        options: keyword arguments of the ``trackers`` class, over :data:`TRACKER_OPTIONS`
            (e.g. other thresholds for a model whose scores are calibrated otherwise).
        smoothing: None, or a dict of :class:`OneEuroFilter` arguments (``{}`` for its
            defaults) to smooth each tracked person's keypoints.
    """

    def __init__(
        self, tracker="bytetrack", frame_rate=30.0, lost_seconds=1.0, options=None, smoothing=None
    ):
        if tracker not in TRACKERS:
            raise ValueError(f"tracker={tracker!r}: expected one of {sorted(TRACKERS)}")
        trackers, self._supervision = _import_trackers()
        self.frame_rate = float(frame_rate or 30.0)
        # trackers counts the buffer in frames at 30 FPS and scales it by frame_rate.
        options = {
            "minimum_consecutive_frames": 1,
            **TRACKER_OPTIONS.get(tracker, {}),
            **(options or {}),
        }
        try:
            self._tracker = getattr(trackers, TRACKERS[tracker])(
                lost_track_buffer=max(1, round(30 * lost_seconds)),
                frame_rate=self.frame_rate,
                **options,
            )
        except TypeError as e:
            raise ValueError(f"PoseTracker({tracker!r}, options={options}): {e}") from e
        self.name = tracker
        self.lost_seconds = lost_seconds
        self._smoothing = None if smoothing is None else dict(smoothing)
        if self._smoothing is not None:
            OneEuroFilter(**self._smoothing)  # checks the arguments now
        self._filters = {}
        self._frames = 0

    def update(self, poses, timestamp=None):
        """``poses`` (the runner's dict of one frame) with ``track_ids`` (N,) int64 added, in
        the same order; -1 for a person not (yet) tracked. With smoothing, ``keypoints`` are
        the filtered ones of tracked people (their scores unchanged). ``timestamp``: the
        frame's time in seconds; None: ``1 / frame_rate`` after the previous frame."""
        time = self._frames / self.frame_rate if timestamp is None else float(timestamp)
        self._frames += 1
        count = len(poses["boxes"])
        detections = self._supervision.Detections(
            xyxy=np.asarray(poses["boxes"], dtype=np.float32).reshape(-1, 4),
            confidence=np.asarray(poses["scores"], dtype=np.float32),
            class_id=np.zeros(count, dtype=int),
            data={"index": np.arange(count)},
        )
        tracked = self._tracker.update(detections, timestamp=timestamp)
        track_ids = np.full(count, -1, dtype=np.int64)
        if len(tracked):  # (with no detections, trackers returns no data field)
            track_ids[tracked.data["index"]] = tracked.tracker_id
        result = dict(poses, track_ids=track_ids)
        if self._smoothing is not None:
            result["keypoints"] = self._smooth(poses["keypoints"], track_ids, time)
        return result

    def _smooth(self, keypoints, track_ids, time):
        keypoints = np.array(keypoints, dtype=np.float32, copy=True)
        for i, track_id in enumerate(track_ids):
            if track_id < 0:
                continue
            one_euro = self._filters.get(track_id)
            if one_euro is None:
                one_euro = self._filters[track_id] = OneEuroFilter(**self._smoothing)
            keypoints[i, :, :2] = one_euro(keypoints[i, :, :2], time)
        # Forget the filters of people lost for longer than the tracker remembers them.
        for track_id in [t for t, f in self._filters.items() if time - f.time > self.lost_seconds]:
            del self._filters[track_id]
        return keypoints
