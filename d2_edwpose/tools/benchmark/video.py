"""The benchmark's video mode (``--video``): the runner's whole video pipeline, end to end.

For each config's ONNX export (random weights, N people per frame) and each runtime and
precision of ``--deploy``, on a video of each ``--video-size`` (a synthetic clip of walking
people, or the ``--video`` file): decoding, pre-processing, the graph, keypoint decoding,
tracking, drawing and MPEG-4 encoding with JSON Lines, as ``python -m pose_runner clip.mp4
--output DIR`` runs them (``OnnxPoseRunner.stream`` and ``PoseWriter``, overlapped in
threads). It reports:

* throughput: frames per second over a whole file (every frame processed);
* latency: from reading a frame to its tracked poses, with the file read as a live camera
  (paced at its frame rate, the newest frame first), and the frames dropped to keep up;
* each stage's share of the time when the stages run one after another on one frame at a
  time (what the threads overlap).

The rows of one size are run in interleaved rounds, one run of each per round.
"""

import statistics
import tempfile
import time
from pathlib import Path

import cv2
import numpy as np
import torch

from d2_edwpose.data.synthetic import generate_synthetic_clip
from d2_edwpose.deploy.drawing import draw_poses
from d2_edwpose.deploy.streaming import PoseWriter
from d2_edwpose.deploy.tracking import PoseTracker

from .deploy import deploy_rows, deploy_runners
from .timing import (
    build_benchmark_model,
    describe_cpu,
    fix_num_detections,
    p10_p90,
    runtime_settings,
)

__all__ = ["STAGES", "format_video_table", "run_video"]

STAGES = ("decode", "pre-processing", "graph", "post-processing", "tracking", "drawing", "encoding")


def _video_model(cfg, num_people):
    """The benchmark model, its detections scored about 0.99: ByteTrack starts tracks only
    from confident detections, so that the tracker does its real work."""
    model = build_benchmark_model(fix_num_detections(cfg, num_people))
    with torch.no_grad():
        model.roi_heads.box_predictor.cls_score.bias[0] = 5.0  # the person logit; background 0
    return model


def _pipeline_run(runner, clip, folder, live):
    """One run of the pipeline over ``clip``: (frames, seconds, latencies, dropped)."""
    frames, latencies, dropped = 0, [], 0
    writer = PoseWriter(folder, "benchmark", True, 30.0, runner.skeleton())
    start = time.perf_counter()
    try:
        for frame in runner.stream(str(clip), live=live):
            writer.write(frame)
            frames += 1
            latencies.append(frame.latency)
            dropped = frame.dropped
    finally:
        writer.close()
    return frames, time.perf_counter() - start, latencies, dropped


def _stage_times(runner, clip, folder):
    """Median ms of each of ``STAGES`` per frame, one stage after the other."""
    capture = cv2.VideoCapture(str(clip))
    tracker = PoseTracker("bytetrack")
    edges = runner.skeleton()
    writer = None
    times = {stage: [] for stage in STAGES}
    try:
        while True:
            marks = [time.perf_counter()]
            ok, image = capture.read()
            if not ok:
                break
            marks.append(time.perf_counter())
            graph_input = runner.preprocess(image)
            marks.append(time.perf_counter())
            outputs = runner.run_graph(graph_input)
            marks.append(time.perf_counter())
            poses = runner.postprocess(outputs, image.shape[:2])
            marks.append(time.perf_counter())
            poses = tracker.update(poses)
            marks.append(time.perf_counter())
            drawn = draw_poses(image, poses, edges, "FPS")
            marks.append(time.perf_counter())
            if writer is None:
                writer = cv2.VideoWriter(
                    str(Path(folder, "stages.mp4")), cv2.VideoWriter_fourcc(*"mp4v"), 30.0,
                    (image.shape[1], image.shape[0]),
                )  # fmt: skip
            writer.write(drawn)
            marks.append(time.perf_counter())
            for stage, begin, end in zip(STAGES, marks, marks[1:]):
                times[stage].append(end - begin)
    finally:
        capture.release()
        if writer is not None:
            writer.release()
    return {stage: 1000 * statistics.median(values) for stage, values in times.items()}


def _clips(args, folder):
    """[(label, path)] of the videos to time."""
    if args.video != "synthetic":
        capture = cv2.VideoCapture(args.video)
        if not capture.isOpened():
            raise SystemExit(f"--video {args.video}: OpenCV cannot open it")
        size = f"{int(capture.get(cv2.CAP_PROP_FRAME_WIDTH))}×{int(capture.get(cv2.CAP_PROP_FRAME_HEIGHT))}"
        capture.release()
        return [(size, Path(args.video))]
    clips = []
    for width, height in args.video_sizes:
        path = Path(folder, f"walkers_{width}x{height}.mp4")
        generate_synthetic_clip(path, args.video_frames, width, height, num_people=4, seed=0)
        clips.append((f"{width}×{height}", path))
    return clips


def run_video(args, models):
    """Rows of the video table for ``models`` [(name, cfg)]."""
    deploy = deploy_rows(args.deploy or ())
    image = torch.zeros(3, *args.size, dtype=torch.uint8)
    rows = []
    with tempfile.TemporaryDirectory() as folder:
        clips = _clips(args, folder)
        runners = {}
        for name, cfg in models:
            model = _video_model(cfg.clone(), args.num_people)
            exports = Path(args.keep_exports or folder) / name
            for row, runner in deploy_runners(model, deploy, image, exports).items():
                runners[(name, *row)] = runner
        for size, clip in clips:
            throughput = {key: [] for key in runners}
            for round_index in range(args.warmup + args.repeats):
                for key, runner in runners.items():
                    frames, seconds, _, _ = _pipeline_run(runner, clip, folder, live=False)
                    if round_index >= args.warmup:
                        throughput[key].append(frames / seconds)
            for key, runner in runners.items():
                _, _, latencies, dropped = _pipeline_run(runner, clip, folder, live=True)
                stages = _stage_times(runner, clip, folder)
                low, high = p10_p90(throughput[key])
                rows.append(
                    {
                        "model": key[0], "runtime": key[1], "precision": key[2], "size": size,
                        "fps": statistics.median(throughput[key]), "fps_p10": low, "fps_p90": high,
                        "latency_ms": 1000 * statistics.median(latencies),
                        "latency_p90_ms": 1000 * p10_p90(latencies)[1],
                        "dropped": dropped, "frames": len(latencies) + dropped, "stages": stages,
                    }
                )  # fmt: skip
                print(
                    f"{key} {size}: {rows[-1]['fps']:.1f} FPS, {rows[-1]['latency_ms']:.0f} ms",
                    flush=True,
                )
    return rows


def format_video_table(rows, args):
    lines = [
        f"Video mode, N = {args.num_people} people per frame, random weights, "
        f"{describe_cpu()}, {torch.get_num_threads()} threads; {args.video_frames if args.video == 'synthetic' else 'all'} "
        f"frames per video, {args.repeats} interleaved rounds after {args.warmup}; {runtime_settings()}.",
        "",
        "| model | runtime | video | end-to-end FPS, file (p10–p90) | latency, live: median / p90 | dropped, live | "
        + " | ".join(STAGES)
        + " | serial sum |",
        "|---|---|---|---|---|---|" + "---|" * (len(STAGES) + 1),
    ]
    for r in rows:
        total = sum(r["stages"].values())
        shares = " | ".join(
            f"{r['stages'][s]:.1f} ({100 * r['stages'][s] / total:.0f} %)" for s in STAGES
        )
        lines.append(
            f"| {r['model']} | {r['runtime']} {r['precision']} | {r['size']} | {r['fps']:.1f} "
            f"({r['fps_p10']:.1f}–{r['fps_p90']:.1f}) | {r['latency_ms']:.0f} / {r['latency_p90_ms']:.0f} ms "
            f"| {r['dropped']} of {r['frames']} | {shares} | {total:.1f} ms |"
        )
    return "\n".join(lines)
