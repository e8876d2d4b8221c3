"""The runner on videos, cameras and streams: sources, tracking, drawing, JSON Lines, errors,
interruption; and the synthetic clips they are tested on."""

import json
import shutil
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import cv2
import numpy as np
import pytest

from detectron2.data import MetadataCatalog
from detectron2.data.datasets.builtin_meta import _get_builtin_metadata

from d2_edwpose.data.keypoint_sets import CROWDPOSE_KEYPOINTS
from d2_edwpose.data.synthetic import generate_synthetic_clip
from d2_edwpose.deploy import OnnxPoseRunner
from d2_edwpose.deploy.__main__ import main as runner_main
from d2_edwpose.deploy.drawing import draw_poses, skeleton_edges
from d2_edwpose.deploy.sources import SourceError, open_source
from d2_edwpose.deploy.streaming import _END, _NewestFrame, pose_record, read_json_lines
from d2_edwpose.deploy.tracking import OneEuroFilter, PoseTracker, parse_tracker_options
from d2_edwpose.export import export_onnx
from d2_edwpose.tools.evaluate_tracking import track_metrics

from conftest import REPO_ROOT

POSE_KEYS = ("boxes", "scores", "classes", "keypoints")


@pytest.fixture(scope="module")
def exported(trained, tmp_path_factory):
    """The briefly trained model's ONNX export, with COCO's keypoint names and skeleton."""
    _, model = trained
    metadata = MetadataCatalog.get("__test_video_coco").set(**_get_builtin_metadata("coco_person"))
    return export_onnx(model, tmp_path_factory.mktemp("video") / "model.onnx", metadata)


# The briefly trained model rarely scores a person as high as the default thresholds (chosen
# for the `make demo` model) expect to start a track: trackers' own thresholds suit it.
BRIEF_MODEL_TRACKER_OPTIONS = {"high_conf_det_threshold": 0.6, "track_activation_threshold": 0.7}


@pytest.fixture(scope="module")
def runner(exported):
    return OnnxPoseRunner(exported, runtime="openvino", num_threads=1)


@pytest.fixture(scope="module")
def crossing(tmp_path_factory):
    """A 640x360 clip of three synthetic people crossing, and its ground truth."""
    video, truth = generate_synthetic_clip(
        tmp_path_factory.mktemp("clips") / "crossing.mp4", num_frames=45, num_people=3, seed=1
    )
    return video, json.loads(truth.read_text())


def _decoded(video):
    capture = cv2.VideoCapture(str(video))
    frames = []
    while True:
        ok, image = capture.read()
        if not ok:
            return frames
        frames.append(image)


def _assert_same_poses(found, expected):
    for key in POSE_KEYS:
        np.testing.assert_array_equal(found[key], expected[key], err_msg=key)


def test_synthetic_clip_is_deterministic_and_its_people_cross(crossing, tmp_path):
    video, truth = crossing
    frames = truth["frames"]
    assert len(frames) == len(_decoded(video)) == 45 and truth["info"]["num_people"] == 3
    assert {p["track_id"] for f in frames for p in f["people"]} == {0, 1, 2}

    # Two people walk in opposite directions: their order along x swaps.
    def centre(frame, track_id):
        (person,) = [p for p in frame["people"] if p["track_id"] == track_id]
        return person["bbox"][0] + person["bbox"][2] / 2

    assert (centre(frames[0], 0) - centre(frames[0], 1)) * (
        centre(frames[-1], 0) - centre(frames[-1], 1)
    ) < 0
    hidden = [v for f in frames for p in f["people"] for v in p["keypoints"][2::3] if v == 1]
    assert hidden, "someone is hidden by someone else at some point"
    again, _ = generate_synthetic_clip(tmp_path / "again.mp4", num_frames=45, num_people=3, seed=1)
    assert json.loads(again.with_suffix(".json").read_text())["frames"] == frames


def test_every_source_kind_gives_the_image_apis_poses(runner, crossing, synthetic_root, tmp_path):
    video, _ = crossing
    decoded = _decoded(video)
    folder = Path(synthetic_root, "val")
    images = sorted(folder.glob("*.jpg"))[:3]
    image_folder = tmp_path / "images"
    image_folder.mkdir()
    for path in images:
        shutil.copy(path, image_folder)
    sources = {
        "image file": (str(images[0]), [cv2.imread(str(images[0]))]),
        "folder": (str(image_folder), [cv2.imread(str(p)) for p in images]),
        "video file": (str(video), decoded),
    }
    for kind, (source, expected_images) in sources.items():
        frames = list(runner.stream(source, tracker=None))
        assert [f.index for f in frames] == list(range(len(expected_images))), kind
        for frame, image in zip(frames, expected_images):
            np.testing.assert_array_equal(frame.image, image)
            _assert_same_poses(frame.poses, runner(image))
    assert sum(len(runner(image)["scores"]) for image in decoded) > 0
    # A camera, simulated by the video read as a live stream at its frame rate: the frames
    # processed are the video's frames of the same index, with the image API's poses.
    live = list(runner.stream(str(video), tracker=None, live=True))
    assert live and live[-1].index + 1 - live[-1].dropped == len(live)
    assert all(a.index < b.index for a, b in zip(live, live[1:]))
    for frame in live:
        np.testing.assert_array_equal(frame.image, decoded[frame.index])
        _assert_same_poses(frame.poses, runner(frame.image))
        assert frame.timestamp == pytest.approx(frame.index / 30.0)


def test_live_source_keeps_its_last_frame_before_the_end():
    """A live source's end arriving before the graph took the last frame: that frame is
    still processed, newer frames still replace older ones, and the end stays the end."""
    stop = threading.Event()
    newest = _NewestFrame()
    for item in ("frame 0", "frame 1", _END):
        newest.put(item, stop)
    assert newest.take(stop) == ("frame 1", 1)
    assert newest.take(stop) == (_END, 1)
    assert newest.take(stop) == (_END, 1)


def test_ids_persist_through_crossings_and_occlusions(crossing):
    """The tracker on the clip's true people (scored as certain), those mostly hidden left
    out as a detector misses them: every person keeps one id through the crossings."""
    _, truth = crossing
    tracker, tracked = PoseTracker(frame_rate=30.0), []
    for t, frame in enumerate(truth["frames"]):
        people = [p for p in frame["people"] if p["visibility"] >= 0.5]
        boxes = np.array(
            [[x, y, x + w, y + h] for x, y, w, h in (p["bbox"] for p in people)], np.float32
        )
        keypoints = np.array([p["keypoints"] for p in people], np.float32).reshape(-1, 17, 3)
        poses = {
            "boxes": boxes.reshape(-1, 4),
            "scores": np.full(len(people), 0.99, np.float32),
            "keypoints": keypoints,
        }
        tracked.append(tracker.update(poses, t / 30.0))
    clear, identity = track_metrics(truth["frames"], tracked)
    assert clear["IDSW"] == 0 and identity["IDF1"] >= 0.95, (clear, identity)


def test_ids_of_the_trained_model_stay_on_their_person(runner, crossing):
    """On the briefly trained model's own detections, ids persist across frames: the identity
    F1 is several times that of a new id for every detection of every frame, which is what no
    tracking gives. The bar is relative: this model finds few of the people at IoU 0.5, and
    merges overlapping ones (the `make demo` model's figures are in docs/video.md)."""
    video, truth = crossing
    options = BRIEF_MODEL_TRACKER_OPTIONS
    tracked = [f.poses for f in runner.stream(str(video), tracker=PoseTracker(options=options))]
    counts = [len(poses["boxes"]) for poses in tracked]
    assert sum(int((poses["track_ids"] >= 0).sum()) for poses in tracked) >= 0.5 * sum(counts) > 0
    first_ids = np.cumsum([0, *counts])
    untracked = [
        dict(poses, track_ids=np.arange(first, first + count))
        for poses, first, count in zip(tracked, first_ids, counts)
    ]
    _, identity = track_metrics(truth["frames"], tracked)
    _, without_tracking = track_metrics(truth["frames"], untracked)
    assert identity["IDF1"] >= 4 * without_tracking["IDF1"] > 0, (identity, without_tracking)


def test_one_euro_filter_smooths_noise_and_follows_motion():
    rng = np.random.default_rng(0)
    times = np.arange(120) / 30.0
    truth = np.stack([100 + 60 * times, np.full_like(times, 50.0)], axis=1)[:, None, :]
    noisy = truth + rng.normal(0, 2.0, truth.shape)
    one_euro = OneEuroFilter(min_cutoff=1.0, beta=0.05)
    smoothed = np.array([one_euro(value, t) for value, t in zip(noisy, times)])

    def jitter(series):
        return np.abs(np.diff(series - truth, 2, axis=0)).mean()

    assert jitter(smoothed) < 0.5 * jitter(noisy)
    assert np.abs(smoothed[30:] - truth[30:]).mean() < 2.0  # no runaway lag at 60 px/s
    with pytest.raises(ValueError, match="min_cutoff > 0"):
        OneEuroFilter(min_cutoff=0)


def test_smoothing_changes_only_tracked_keypoints(runner, crossing):
    video, _ = crossing
    options = BRIEF_MODEL_TRACKER_OPTIONS
    plain = list(runner.stream(str(video), tracker=PoseTracker(options=options)))
    smooth = list(runner.stream(str(video), tracker=PoseTracker(options=options, smoothing={})))
    moved = 0
    for a, b in zip(plain, smooth):
        np.testing.assert_array_equal(a.poses["track_ids"], b.poses["track_ids"])
        np.testing.assert_array_equal(a.poses["boxes"], b.poses["boxes"])
        untracked = a.poses["track_ids"] < 0
        np.testing.assert_array_equal(
            a.poses["keypoints"][untracked], b.poses["keypoints"][untracked]
        )
        np.testing.assert_array_equal(a.poses["keypoints"][..., 2], b.poses["keypoints"][..., 2])
        moved += int((a.poses["keypoints"] != b.poses["keypoints"]).any())
    assert moved > len(plain) // 2


def test_command_writes_a_video_and_json_lines_that_round_trip(
    exported, runner, crossing, tmp_path
):
    video, _ = crossing
    options = [f"{key}={value}" for key, value in BRIEF_MODEL_TRACKER_OPTIONS.items()]
    (summary,) = runner_main(
        [str(exported), str(video), "--output", str(tmp_path), "--threads", "1",
         "--tracker-options", *options]
    )  # fmt: skip
    assert summary["frames"] == 45 and summary["dropped"] == 0
    records = read_json_lines(tmp_path / "crossing.jsonl")
    expected = list(runner.stream(str(video), tracker_options=BRIEF_MODEL_TRACKER_OPTIONS))
    assert records == [json.loads(json.dumps(pose_record(f))) for f in expected]
    assert {p["track_id"] for r in records for p in r["people"]} - {None}
    assert records[1]["timestamp"] == pytest.approx(1 / 30) and records[0]["width"] == 640
    drawn = _decoded(tmp_path / "crossing.mp4")
    assert len(drawn) == 45 and drawn[0].shape == (360, 640, 3)
    assert not list(tmp_path.glob("*.partial*"))
    broken = tmp_path / "broken.jsonl"
    broken.write_text(json.dumps(records[0]) + "\n" + '{"index": 1}\n')
    with pytest.raises(ValueError, match=r"broken.jsonl:2: expected the fields"):
        read_json_lines(broken)


def test_drawing_follows_a_non_coco_keypoint_set():
    names = CROWDPOSE_KEYPOINTS["keypoint_names"]
    rules = CROWDPOSE_KEYPOINTS["keypoint_connection_rules"]
    edges = skeleton_edges(names, rules)
    assert len(edges) == len(rules)
    # One rule drawn in pure red between two keypoints far apart; no other rule.
    head, neck = names.index("head"), names.index("neck")
    edges = skeleton_edges(names, [("head", "neck", (255, 0, 0))])
    keypoints = np.zeros((1, len(names), 3), np.float32)
    keypoints[0, :, :2] = 5
    keypoints[0, head] = (50, 20, 0.9)
    keypoints[0, neck] = (50, 80, 0.9)
    poses = {
        "boxes": np.array([[30, 10, 70, 90]], np.float32),
        "scores": np.array([0.9]),
        "keypoints": keypoints,
    }
    drawn = draw_poses(np.zeros((100, 100, 3), np.uint8), poses, edges)
    blue, green, red = drawn[50, 50]  # BGR: the rule's red (anti-aliased), between the two
    assert blue == green == 0 and red > 200
    assert not drawn[5, 5].any()  # keypoints scored 0 are not drawn
    with pytest.raises(ValueError, match=r"connection rule \('head', 'tail'\)"):
        skeleton_edges(names, [("head", "tail", (0, 0, 0))])


def test_export_carries_the_skeleton_for_the_runner(runner):
    coco = _get_builtin_metadata("coco_person")
    assert runner.keypoint_names == list(coco["keypoint_names"])
    assert runner.keypoint_connection_rules == [
        list(r[:2]) + [list(r[2])] for r in coco["keypoint_connection_rules"]
    ]
    assert len(runner.skeleton()) == len(coco["keypoint_connection_rules"])


@pytest.mark.parametrize(
    "source, message",
    [
        ("missing.mp4", r"missing.mp4: no such file or folder"),
        ("rtsp://127.0.0.1:9/none", r"rtsp://127.0.0.1:9/none: OpenCV cannot open it"),
        ("97", r"camera 97: OpenCV cannot open it"),
        ("not_a_video.mp4", r"not_a_video.mp4: OpenCV cannot open it|could not read a frame"),
    ],
)
def test_sources_that_cannot_be_read_are_named_before_anything_is_written(
    exported, tmp_path, source, message
):
    (tmp_path / "not_a_video.mp4").write_bytes(b"no video here")
    output = tmp_path / "out"
    args = [str(exported), str(tmp_path / source) if source.endswith(".mp4") else source]
    with pytest.raises(SystemExit, match=message):
        runner_main([*args, "--output", str(output)])
    assert not output.exists()
    with pytest.raises((FileNotFoundError, SourceError), match=message):
        open_source(args[1])


def test_interrupted_run_leaves_a_playable_video_and_valid_json_lines(exported, tmp_path):
    video, _ = generate_synthetic_clip(
        tmp_path / "long.mp4", num_frames=150, width=320, height=240, num_people=2
    )
    output = tmp_path / "out"
    process = subprocess.Popen(
        [sys.executable, "-m", "d2_edwpose.deploy", str(exported), str(video), "--live",
         "--output", str(output), "--threads", "1"],
        cwd=REPO_ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    lines = output / "long.jsonl"
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline and process.poll() is None:
        if lines.exists() and len(lines.read_text().splitlines()) >= 5:
            break
        time.sleep(0.1)
    process.send_signal(signal.SIGINT)
    _, stderr = process.communicate(timeout=60)
    assert process.returncode == 130, stderr[-2000:]
    assert "interrupted" in stderr
    records = read_json_lines(lines)
    assert 5 <= len(records) < 150
    assert len(_decoded(output / "long.mp4")) == len(records)


def test_tracker_options_are_key_number_pairs():
    assert parse_tracker_options(["track_activation_threshold=0.7", "lost_track_buffer=60"]) == {
        "track_activation_threshold": 0.7,
        "lost_track_buffer": 60,
    }
    for malformed in ("track_activation_threshold", "=0.7", "track_activation_threshold=high"):
        with pytest.raises(ValueError, match="expected KEY=NUMBER"):
            parse_tracker_options([malformed])
