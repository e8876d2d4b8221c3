"""Tracking quality on synthetic clips of people crossing each other, with ground truth.

    python -m d2_edwpose.tools.evaluate_tracking --model output/export/model.onnx \
        [--clips 8] [--first-seed 0] [--frames 90] [--size 640 360] [--people 3]
        [--output output/tracking] [--score-threshold S] [--bytetrack-options KEY=VALUE ...]

Writes the clips (``d2_edwpose.data.synthetic.generate_synthetic_clip``, seeds from
``--first-seed`` on) under ``--output``, runs the exported model on every frame once (the runner, as
``python -m pose_runner`` does) and then each tracker on the same detections, so that the
trackers are compared on equal input. Prints, per tracker, CLEAR's MOTA and id switches and
the identity F1 (IDF1) over all clips, computed with the TrackEval ports of Roboflow's
``trackers.eval`` (a detection matches a person at box IoU >= 0.5; people with less than
half of their keypoints visible are left out, as MOTChallenge does), and the effect of the
One Euro keypoint smoothing: keypoint jitter (RMS of the second difference in time of the
error against the ground truth, px) and mean keypoint error (px), for visible keypoints of
matched people. Norfair (box IoU, and its keypoint voting) is compared when importable; the
set-up does not install it (docs/video.md says why).
"""

import argparse
import json
from pathlib import Path

import numpy as np

from d2_edwpose.data.synthetic import generate_synthetic_clip
from d2_edwpose.deploy import OnnxPoseRunner
from d2_edwpose.deploy.tracking import TRACKERS, PoseTracker, parse_tracker_options

__all__ = ["evaluate", "main", "run_detections", "track_metrics"]

IOU_THRESHOLD = 0.5
# People with fewer of their keypoints visible are left out of the scores, with the detections
# that match them (neither a miss nor a false positive), as MOTChallenge leaves out people
# mostly hidden.
MIN_VISIBILITY = 0.5


def _box_iou(a, b):
    """IoU of every box of ``a`` (N, 4) with every box of ``b`` (M, 4), XYXY."""
    a, b = np.asarray(a, np.float64).reshape(-1, 4), np.asarray(b, np.float64).reshape(-1, 4)
    x0 = np.maximum(a[:, None, 0], b[None, :, 0])
    y0 = np.maximum(a[:, None, 1], b[None, :, 1])
    x1 = np.minimum(a[:, None, 2], b[None, :, 2])
    y1 = np.minimum(a[:, None, 3], b[None, :, 3])
    inter = np.clip(x1 - x0, 0, None) * np.clip(y1 - y0, 0, None)
    area_a = (a[:, 2] - a[:, 0]) * (a[:, 3] - a[:, 1])
    area_b = (b[:, 2] - b[:, 0]) * (b[:, 3] - b[:, 1])
    return inter / np.maximum(area_a[:, None] + area_b[None, :] - inter, 1e-9)


def _truth_boxes(people):
    return np.array(
        [[x, y, x + w, y + h] for x, y, w, h in (p["bbox"] for p in people)], np.float64
    ).reshape(-1, 4)


def run_detections(runner, clip, score_threshold=None):
    """The runner's poses (no tracking) and timestamps of every frame of ``clip``."""
    frames = runner.stream(str(clip), score_threshold, tracker=None)
    return [(frame.poses, frame.timestamp) for frame in frames]


def _norfair_tracker(kind, frame_height):
    """A Norfair tracker on boxes (IoU) or keypoints (its keypoint voting), as a function
    of a frame's poses to their track ids; None when Norfair is not importable."""
    try:
        import norfair
        from norfair.distances import create_keypoints_voting_distance
    except ImportError:
        return None
    if kind == "boxes":
        tracker = norfair.Tracker(
            distance_function="iou", distance_threshold=0.7, hit_counter_max=30
        )
    else:
        distance = create_keypoints_voting_distance(
            keypoint_distance_threshold=0.06 * frame_height, detection_threshold=0.1
        )
        tracker = norfair.Tracker(
            distance_function=distance, distance_threshold=0.99, hit_counter_max=30
        )

    def update(poses, timestamp):
        detections = []
        for i, (box, score, keypoints) in enumerate(
            zip(poses["boxes"], poses["scores"], poses["keypoints"])
        ):
            if kind == "boxes":
                detections.append(
                    norfair.Detection(
                        np.asarray(box, np.float64).reshape(2, 2), np.array([score, score]), data=i
                    )
                )
            else:
                detections.append(
                    norfair.Detection(keypoints[:, :2].astype(np.float64), keypoints[:, 2], data=i)
                )
        track_ids = np.full(len(detections), -1, dtype=np.int64)
        for tracked in tracker.update(detections):
            if any(tracked.last_detection is d for d in detections):
                track_ids[tracked.last_detection.data] = tracked.id
        return dict(poses, track_ids=track_ids)

    return update


def _trackers(names, frame_rate, frame_height, smoothing=None, options=None):
    """{name: update(poses, timestamp) -> poses with track_ids} of fresh trackers;
    ``options``: {name: PoseTracker options}."""
    made = {}
    for name in names:
        if name in TRACKERS:
            tracker_options = (options or {}).get(name)
            made[name] = PoseTracker(
                name, frame_rate=frame_rate, options=tracker_options, smoothing=smoothing
            ).update
        else:
            kind = name.split("-", 1)[1]
            update = _norfair_tracker(kind, frame_height)
            if update is not None:
                made[name] = update
    return made


def track_metrics(truth_frames, tracked_frames):
    """MOTA, IDF1 and id switches (and their counts) of one clip, with trackers.eval."""
    from trackers.eval import compute_clear_metrics, compute_identity_metrics

    gt_ids, hyp_ids, similarities = [], [], []
    for truth, poses in zip(truth_frames, tracked_frames):
        keep = poses["track_ids"] >= 0
        people = [p for p in truth["people"] if p["visibility"] >= MIN_VISIBILITY]
        hidden = [p for p in truth["people"] if p["visibility"] < MIN_VISIBILITY]
        boxes = poses["boxes"][keep]
        iou = _box_iou(_truth_boxes(people), boxes)
        on_hidden = _box_iou(_truth_boxes(hidden), boxes).max(axis=0, initial=0) >= IOU_THRESHOLD
        on_scored = iou.max(axis=0, initial=0) >= IOU_THRESHOLD
        counted = ~(on_hidden & ~on_scored)
        gt_ids.append(np.array([p["track_id"] for p in people], dtype=int))
        hyp_ids.append(poses["track_ids"][keep][counted].astype(int))
        similarities.append(iou[:, counted])
    clear = compute_clear_metrics(gt_ids, hyp_ids, similarities, IOU_THRESHOLD)
    identity = compute_identity_metrics(gt_ids, hyp_ids, similarities, IOU_THRESHOLD)
    return clear, identity


def _keypoint_errors(truth_frames, tracked_frames):
    """Per (true person, keypoint): the error (x, y) of its matched detection per frame
    (NaN where unmatched or not visible)."""
    errors = {}
    for t, (truth, poses) in enumerate(zip(truth_frames, tracked_frames)):
        boxes = _truth_boxes(truth["people"])
        iou = _box_iou(boxes, poses["boxes"])
        for row, person in enumerate(truth["people"]):
            if not iou.shape[1] or iou[row].max() < IOU_THRESHOLD:
                continue
            found = poses["keypoints"][int(iou[row].argmax()), :, :2]
            true = np.asarray(person["keypoints"], np.float64).reshape(-1, 3)
            # The ground truth is in pixel indices, the runner's keypoints continuous (+0.5).
            error = found - (true[:, :2] + 0.5)
            error[true[:, 2] < 2] = np.nan
            series = errors.setdefault(
                person["track_id"], np.full((len(truth_frames), *error.shape), np.nan)
            )
            series[t] = error
    return errors


def smoothing_effect(truth_frames, tracked_frames):
    """(jitter, mean error) in px over all matched visible keypoints of one clip."""
    second_differences, distances = [], []
    for series in _keypoint_errors(truth_frames, tracked_frames).values():
        second = series[2:] - 2 * series[1:-1] + series[:-2]
        second_differences.append(second[~np.isnan(second)])
        distances.append(np.linalg.norm(series, axis=-1)[~np.isnan(series[..., 0])])
    second = np.concatenate(second_differences) if second_differences else np.zeros(0)
    distances = np.concatenate(distances) if distances else np.zeros(0)
    return float(np.sqrt(np.mean(second**2))), float(np.mean(distances))


def evaluate(runner, clips, tracker_names, smoothing=None, score_threshold=None, options=None):
    """Metrics of each tracker over ``clips`` [(video, ground truth file)]: {name: {...}};
    ``options``: {tracker name: PoseTracker options}."""
    totals = {}
    smooth = {"without": [], "with": []}
    for video, truth_path in clips:
        truth = json.loads(Path(truth_path).read_text())
        frames = truth["frames"]
        detections = run_detections(runner, video, score_threshold)
        if len(detections) != len(frames):
            raise RuntimeError(
                f"{video}: {len(detections)} frames read, the ground truth has {len(frames)}"
            )
        info = truth["info"]
        for name, update in _trackers(
            tracker_names, info["frame_rate"], info["height"], options=options
        ).items():
            tracked = [update(poses, timestamp) for poses, timestamp in detections]
            clear, identity = track_metrics(frames, tracked)
            total = totals.setdefault(
                name, {"IDTP": 0, "IDFP": 0, "IDFN": 0, "IDSW": 0, "TP": 0, "FP": 0, "FN": 0}
            )
            for key in ("IDTP", "IDFP", "IDFN"):
                total[key] += identity[key]
            for key, field in (
                ("IDSW", "IDSW"),
                ("TP", "CLR_TP"),
                ("FP", "CLR_FP"),
                ("FN", "CLR_FN"),
            ):
                total[key] += clear[field]
            if name == "bytetrack":
                smooth["without"].append(smoothing_effect(frames, tracked))
        if smoothing is not None:
            bytetrack_options = (options or {}).get("bytetrack")
            update = PoseTracker(
                "bytetrack",
                frame_rate=info["frame_rate"],
                options=bytetrack_options,
                smoothing=smoothing,
            ).update
            tracked = [update(poses, timestamp) for poses, timestamp in detections]
            smooth["with"].append(smoothing_effect(frames, tracked))
    results = {}
    for name, t in totals.items():
        results[name] = {
            "MOTA": (t["TP"] - t["FP"] - t["IDSW"]) / max(t["TP"] + t["FN"], 1),
            "IDF1": 2 * t["IDTP"] / max(2 * t["IDTP"] + t["IDFP"] + t["IDFN"], 1),
            "id switches": t["IDSW"],
            "misses": t["FN"],
            "false positives": t["FP"],
        }
    for key, values in smooth.items():
        if values:
            results[f"keypoints, {key} smoothing"] = {
                "jitter px": float(np.mean([v[0] for v in values])),
                "mean error px": float(np.mean([v[1] for v in values])),
            }
    return results


def format_results(results, clips, args, runner_name):
    lines = [
        f"{len(clips)} synthetic clips of {args.people} people crossing, {args.frames} frames of "
        f"{args.size[0]}x{args.size[1]} each, model {args.model} ({runner_name}), people scored "
        f"above {args.score_threshold}.",
        "",
        "| tracker | IDF1 | MOTA | id switches | misses | false positives |",
        "|---|---|---|---|---|---|",
    ]
    for name, r in results.items():
        if "IDF1" in r:
            lines.append(
                f"| {name} | {r['IDF1']:.3f} | {r['MOTA']:.3f} | {r['id switches']} | "
                f"{r['misses']} | {r['false positives']} |"
            )
    smooth = [(n, r) for n, r in results.items() if "jitter px" in r]
    if smooth:
        lines += ["", "| ByteTrack keypoints | jitter (px) | mean error (px) |", "|---|---|---|"]
        lines += [f"| {n} | {r['jitter px']:.2f} | {r['mean error px']:.2f} |" for n, r in smooth]
    return "\n".join(lines)


def main(argv=None):
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--model", required=True, help="ONNX export (python -m d2_edwpose.tools.export_model)"
    )
    parser.add_argument("--runtime", help="the runner's runtime (default: the first installed)")
    parser.add_argument("--precision", default="fp32")
    parser.add_argument(
        "--score-threshold",
        type=float,
        help="the detections the trackers see; default: the exported one, as the runner's",
    )
    parser.add_argument("--clips", type=int, default=8)
    parser.add_argument(
        "--first-seed",
        type=int,
        default=0,
        help="the clips' seeds follow it (tune on others than reported)",
    )
    parser.add_argument("--frames", type=int, default=90)
    parser.add_argument("--size", type=int, nargs=2, default=(640, 360), metavar=("W", "H"))
    parser.add_argument("--people", type=int, default=3)
    parser.add_argument("--output", default="output/tracking", help="where the clips are written")
    parser.add_argument(
        "--trackers",
        nargs="+",
        default=[*TRACKERS, "norfair-boxes", "norfair-keypoints"],
        help="names of d2_edwpose.deploy.tracking.TRACKERS, norfair-boxes, norfair-keypoints",
    )
    parser.add_argument(
        "--bytetrack-options",
        nargs="+",
        default=[],
        metavar="KEY=VALUE",
        help="ByteTrack arguments over d2_edwpose.deploy.tracking.TRACKER_OPTIONS, e.g. "
        "track_activation_threshold=0.7",
    )
    args = parser.parse_args(argv)
    try:
        options = parse_tracker_options(args.bytetrack_options)
    except ValueError as e:
        parser.error(f"--bytetrack-options {e}")
    runner = OnnxPoseRunner(args.model, runtime=args.runtime, precision=args.precision)
    if args.score_threshold is None:
        args.score_threshold = runner.score_threshold
    width, height = args.size
    clips = [
        generate_synthetic_clip(
            Path(args.output, f"crossing_{seed:03d}.mp4"),
            args.frames,
            width,
            height,
            args.people,
            seed,
        )
        for seed in range(args.first_seed, args.first_seed + args.clips)
    ]
    results = evaluate(
        runner, clips, args.trackers, {}, args.score_threshold, {"bytetrack": options}
    )
    print(format_results(results, clips, args, f"{runner.runtime} {runner.precision}"))
    return results


if __name__ == "__main__":
    main()
