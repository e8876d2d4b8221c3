"""Poses in images, videos, cameras and streams, tracked, drawn and as JSON Lines:

    python -m d2_edwpose.deploy model.onnx clip.mp4 --output out/ [--show]
    python -m d2_edwpose.deploy model.onnx photo.jpg photos/ 0 rtsp://camera/stream [...]
        [--runtime openvino|onnxruntime] [--precision fp32|bf16] [--score-threshold 0.5]
        [--threads N] [--tracker bytetrack|ocsort|sort | --no-track] [--smooth] [--live]
        [--tracker-options KEY=VALUE ...]

(``python -m FOLDER ...`` for a copy of this folder, e.g. ``python -m pose_runner ...``.)
A source is an image file, a folder of images, a video file, a camera index (``0``) or a
stream URL (whatever the installed OpenCV opens). With ``--output DIR``, each source gives
``DIR/STEM.jsonl`` (one line per frame: index, timestamp, people with track id, box, score
and keypoints) and its drawing: ``DIR/STEM.mp4`` for a video, camera or stream, the drawn
images under their own names for image files; without it, the JSON lines go to standard
output. A camera or stream runs until it ends or Ctrl-C; what was written stays complete.
"""

import argparse
import json
import os
import re
import signal
import statistics
import sys
import time

import cv2

from .drawing import draw_poses
from .onnx_pose_runner import PRECISIONS, RUNTIMES, OnnxPoseRunner
from .sources import open_source
from .streaming import PoseWriter, pose_record
from .tracking import TRACKERS, parse_tracker_options


def output_stem(name):
    """The outputs' name for a source: a file's or folder's name without suffix,
    ``camera0`` for camera 0, the URL's host and path for a stream."""
    if name.startswith("camera "):
        return "camera" + name.split()[1]
    if "://" in name:
        return re.sub(r"[^A-Za-z0-9._-]+", "_", name.split("://", 1)[1]).strip("_.") or "stream"
    return os.path.splitext(os.path.basename(os.path.normpath(name)))[0]


def _check_outputs(sources, folder):
    """SystemExit when two sources would write the same file, or a drawing an input."""
    written = {}
    inputs = {os.path.realpath(p) for s in sources for p in getattr(s, "paths", [])}
    for source in sources:
        stem = output_stem(source.name)
        names = [f"{stem}.jsonl"]
        names += (
            [os.path.basename(p) for p in source.paths]
            if hasattr(source, "paths")
            else [f"{stem}.mp4"]
        )
        for name in names:
            path = os.path.realpath(os.path.join(folder, name))
            if path in inputs:
                raise SystemExit(f"--output {folder}: {name} would overwrite an input")
            if path in written:
                raise SystemExit(
                    f"--output {folder}: {written[path]} and {source.name} would both write {name}"
                )
            written[path] = source.name


def main(argv=None):
    parser = argparse.ArgumentParser(
        prog=f"python -m {__package__}",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("model", help="ONNX file written by d2_edwpose.tools.export_model")
    parser.add_argument(
        "sources", nargs="+", help="image files, folders of images, videos, camera indices, URLs"
    )
    parser.add_argument("--output", metavar="DIR", help="folder for the drawings and JSON Lines")
    parser.add_argument("--show", action="store_true", help="show the drawn frames in a window")
    parser.add_argument("--score-threshold", type=float, help="default: the exported one")
    parser.add_argument("--threads", type=int, help="the runtime's intra-op threads")
    parser.add_argument(
        "--runtime", choices=RUNTIMES, help=f"default: the first installed of {list(RUNTIMES)}"
    )
    parser.add_argument(
        "--precision",
        choices=PRECISIONS,
        default="fp32",
        help="of the float operations; bf16: OpenVINO, on CPUs with AVX-512 BF16 or AMX",
    )
    parser.add_argument("--tracker", choices=sorted(TRACKERS), default="bytetrack")
    parser.add_argument("--no-track", action="store_true", help="no track ids")
    parser.add_argument(
        "--tracker-options",
        nargs="+",
        default=[],
        metavar="KEY=VALUE",
        help="the tracker's arguments over d2_edwpose.deploy.tracking.TRACKER_OPTIONS, e.g. "
        "track_activation_threshold=0.7 for a model that seldom scores a person 0.95",
    )
    parser.add_argument(
        "--smooth", action="store_true", help="smooth each tracked person's keypoints (One Euro)"
    )
    parser.add_argument(
        "--live",
        action="store_true",
        help="read video files as cameras: at their frame rate, the newest frame first",
    )
    args = parser.parse_args(argv)
    if args.smooth and args.no_track:
        parser.error("--smooth smooths tracked people: it needs tracking (drop --no-track)")
    if args.tracker_options and args.no_track:
        parser.error("--tracker-options set the tracker: drop --no-track")
    try:
        args.tracker_options = parse_tracker_options(args.tracker_options)
    except ValueError as e:
        parser.error(f"--tracker-options {e}")

    # Every source is opened, and every output checked, before anything is written.
    try:
        sources = [open_source(s, live=True if args.live else None) for s in args.sources]
    except OSError as e:
        raise SystemExit(str(e)) from None
    if args.output:
        _check_outputs(sources, args.output)
    runner = OnnxPoseRunner(
        args.model, num_threads=args.threads, runtime=args.runtime, precision=args.precision
    )
    # SIGTERM as Ctrl-C: the outputs are closed either way.
    signal.signal(signal.SIGTERM, signal.default_int_handler)
    edges = runner.skeleton()
    summaries = []
    try:
        for source in sources:
            summaries.append(_run(runner, source, args, edges))
    except KeyboardInterrupt:
        print("interrupted: the outputs hold every frame processed", file=sys.stderr)
        return 130
    finally:
        for source in sources:
            source.close()
        if args.show:
            cv2.destroyAllWindows()
    return summaries


def _run(runner, source, args, edges):
    """Poses of every frame of one opened source, written; its summary (also printed)."""
    tracker = None if args.no_track else args.tracker
    smoothing = {} if args.smooth else None
    writer = None
    if args.output:
        video = not hasattr(source, "paths")
        writer = PoseWriter(
            args.output, output_stem(source.name), video, source.frame_rate, edges, args.show
        )
    frames, latencies, dropped = 0, [], 0
    start = time.perf_counter()
    stream = runner.stream(
        source,
        args.score_threshold,
        tracker,
        smoothing=smoothing,
        tracker_options=args.tracker_options,
    )
    try:
        for frame in stream:
            frames += 1
            latencies.append(frame.latency)
            dropped = frame.dropped
            if writer is not None:
                writer.write(frame)
            else:
                sys.stdout.write(json.dumps(pose_record(frame)) + "\n")
                sys.stdout.flush()
            if args.show and not _show(writer, frame, edges):
                break
    finally:
        stream.close()
        if writer is not None:
            writer.close()
    seconds = time.perf_counter() - start
    summary = {
        "source": source.name,
        "frames": frames,
        "fps": frames / seconds if seconds else 0.0,
        "latency_ms": 1000 * statistics.median(latencies) if latencies else None,
        "dropped": dropped,
        "outputs": [p for p in (writer.video_path, writer.json_path) if p] if writer else [],
    }
    latency = f", latency {summary['latency_ms']:.0f} ms (median)" if latencies else ""
    print(
        f"{source.name}: {frames} frames, {summary['fps']:.1f} FPS{latency}, {dropped} dropped"
        + (f" -> {', '.join(summary['outputs'])}" if summary["outputs"] else ""),
        file=sys.stderr,
    )
    return summary


def _show(writer, frame, edges):
    """Show the newest drawn frame; False when the window asks to stop (q or Esc)."""
    drawn = writer.drawn if writer is not None else None
    if drawn is None:
        drawn = draw_poses(frame.image, frame.poses, edges)
    cv2.imshow("poses", drawn)
    return cv2.waitKey(1) not in (ord("q"), 27)


if __name__ == "__main__":
    sys.exit(0 if isinstance(main(), list) else 130)
