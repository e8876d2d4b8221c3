"""End-to-end inference latency of Keypoint R-CNN configs at 320x320, batch 1.

    # direct mode (no data): every model detects exactly N people per image
    python -m d2_edwpose.tools.benchmark --stock-r50 --num-people 20 --sweep 1 5 20 50 100 \
        --plot output/benchmark/latency_vs_people.png
    # rewrites mode: what each rewrite of optimize_for_inference buys end to end, on CPU
    python -m d2_edwpose.tools.benchmark configs/keypoint_rcnn_mv3_fpn_320_edw.yaml \
        configs/keypoint_rcnn_mv3_fpn_320_realtime.yaml --rewrites --device cpu
    # video mode: the runner's whole video pipeline (decode -> poses -> track -> draw -> encode)
    python -m d2_edwpose.tools.benchmark --video synthetic --deploy openvino:bf16 --num-people 10
    # dataset mode: detectron2's inference_on_dataset (its built-in timer) on a registered dataset
    python -m d2_edwpose.tools.benchmark configs/cpu_demo_keypoint_rcnn_mv3_fpn_320_edw.yaml \
        --dataset synthetic_keypoints_val --opts MODEL.WEIGHTS output/cpu_demo/model_final.pth

Randomly initialised weights give an arbitrary number of detections, which would make the
keypoint head -- run once per detected person -- cost anything. The direct mode therefore
fixes the work: no score threshold, no box NMS (IoU threshold 1.0) and
``TEST.DETECTIONS_PER_IMAGE = N``, so every model runs its keypoint head on exactly N people
(checked on every run). Latency is the wall time of ``model([{"image": ...}])`` in eval mode
under ``torch.no_grad()``, with CUDA synchronised when the model runs there, after warm-up.
With ``--deploy`` the ONNX export of each d2_edwpose model is also timed, at N, through the
deployment runner (:mod:`d2_edwpose.deploy.onnx_pose_runner`, pre- and post-processing
included), a row per runtime and precision: onnxruntime and OpenVINO in float32 and on the
INT8 quantization (:mod:`d2_edwpose.export.quantization`), OpenVINO in bfloat16 where the CPU has
it. All models of one N are timed in interleaved rounds, one call of each per round, so that
the machine's drift hits every row alike; the table's header names the CPU. With
``--optimize`` every model is also measured after
:func:`d2_edwpose.modeling.cpu_inference.optimize_for_inference`, in a row of its own; speed-ups
"vs vanilla" compare rows of the same kind, "vs stock R50" always compare with detectron2's
model as it is built (what its users run). ``--rewrites`` times, at N, each model as built,
optimized, and optimized without each rewrite in turn, all in the same interleaved rounds, and
prints the share of the latency that each rewrite removes.
"""

import argparse
import time

import torch

from detectron2.data import build_detection_test_loader
from detectron2.evaluation import DatasetEvaluators, inference_on_dataset
from detectron2.modeling import build_model
from detectron2.utils.logger import setup_logger

from d2_edwpose.engine.checkpoint import AtomicValidatingCheckpointer
from d2_edwpose.model_zoo import PAPER_CONFIGS, REALTIME_CONFIG, STOCK_R50_CONFIG
from d2_edwpose.modeling.analysis import analysis_config
from d2_edwpose.modeling.cpu_inference import optimize_for_inference

from .deploy import DEPLOY_ROWS, deploy_row, profile_runner, runner_call
from .direct import config_models, format_table, plot_sweep, run_direct
from .rewrites import format_rewrites_table, run_rewrites
from .video import format_video_table, run_video
from .timing import (
    build_benchmark_model,
    describe_cpu,
    fix_num_detections,
    frame_size,
    measure_latency,
    time_interleaved,
)

# The functions other tools and tests time models with.
__all__ = [
    "build_benchmark_model",
    "describe_cpu",
    "fix_num_detections",
    "main",
    "measure_latency",
    "profile_runner",
    "runner_call",
    "time_interleaved",
]


DEFAULT_CONFIGS = [str(p) for p in (*PAPER_CONFIGS, REALTIME_CONFIG)]


def run_dataset(args):
    """detectron2's ``inference_on_dataset`` on ``args.dataset`` with the one config given;
    its timer logs the total and the pure compute time per image."""
    setup_logger(name="detectron2")  # where detectron2's timer logs
    (path,) = args.configs
    cfg = analysis_config(path, args.size, args.opts)
    cfg.MODEL.DEVICE = args.device
    model = build_model(cfg).eval()
    AtomicValidatingCheckpointer(model).resume_or_load(cfg.MODEL.WEIGHTS, resume=False)
    if args.optimize:
        optimize_for_inference(model)
    loader = build_detection_test_loader(cfg, args.dataset)
    # No evaluator: only detectron2's timer, which logs "Total inference (pure compute) time".
    inference_on_dataset(model, loader, DatasetEvaluators([]))


# The options that each mode other than the direct one has no use for, and why.
MODE_LIMITS = {
    "dataset": (("deploy",), "it times the PyTorch model only"),
    "video": (("optimize", "sweep"), "it times the --deploy rows end to end"),
    "rewrites": (("optimize", "deploy", "profile", "sweep"), "it times each rewrite at N"),
}
CPU_MODES = ("video", "rewrites")


def build_parser():
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "configs",
        nargs="*",
        default=DEFAULT_CONFIGS,
        help="configs to measure (default: the paper's three and the realtime config); "
        "exactly one with --dataset",
    )
    parser.add_argument(
        "--stock-r50", action="store_true", help=f"add detectron2's {STOCK_R50_CONFIG}"
    )
    parser.add_argument(
        "--optimize",
        action="store_true",
        help="also measure every model after optimize_for_inference (a row of its own)",
    )
    parser.add_argument(
        "--deploy",
        nargs="*",
        type=deploy_row,
        metavar="RUNTIME:PRECISION",
        help="also export each d2_edwpose model to ONNX and time the deployment runner at "
        "--num-people, a row per runtime and precision: any of "
        + ", ".join(f"{r}:{p}" for r, p in DEPLOY_ROWS)
        + " (default: all)",
    )
    parser.add_argument(
        "--keep-exports",
        metavar="DIR",
        help="with --deploy: keep the ONNX files that the deployment rows time, in DIR/CONFIG/ "
        "(model.onnx; with an INT8 row model_int8.onnx and its calibration.png), e.g. for "
        "OpenVINO's per-layer profile (benchmark_app -pc)",
    )
    parser.add_argument(
        "--profile",
        action="store_true",
        help="also print the time of each part (backbone, RPN, heads, ...) at --num-people, and "
        "of the deployment runner's steps (pre-processing, graph, post-processing)",
    )
    parser.add_argument(
        "--cpu-time",
        action="store_true",
        help="with --rewrites: time the process's CPU time, not the wall time (a shared machine; "
        "run with OMP_NUM_THREADS=1 so that it is the work of one thread)",
    )
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--size", type=int, nargs=2, default=(320, 320), metavar=("H", "W"))
    parser.add_argument("--num-people", type=int, default=20, help="N of the table")
    parser.add_argument("--sweep", type=int, nargs="*", default=[], help="more values of N to plot")
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--repeats", type=int, default=10)
    parser.add_argument("--plot", help="PNG of latency against N (with --sweep)")
    parser.add_argument(
        "--video-sizes",
        nargs="+",
        type=frame_size,
        default=[(320, 320), (640, 480), (1280, 720), (1920, 1080)],
        metavar="WxH",
        help="with --video synthetic: the frame sizes (default: 320x320 and camera sizes)",
    )
    parser.add_argument("--video-frames", type=int, default=150, help="with --video synthetic")
    parser.add_argument("--opts", nargs=argparse.REMAINDER, default=[], help="KEY VALUE overrides")
    modes = parser.add_mutually_exclusive_group()
    modes.add_argument(
        "--rewrites",
        action="store_true",
        help="rewrites mode (CPU): the share of the latency at --num-people that each rewrite of "
        "optimize_for_inference removes, from the model optimized without it",
    )
    modes.add_argument("--dataset", help="dataset mode: a registered dataset name")
    modes.add_argument(
        "--video",
        metavar="SOURCE",
        help="video mode: a video file, or 'synthetic' for clips of walking people at each "
        "--video-size; times the --deploy rows end to end (default configs: the realtime one)",
    )
    return parser


def _mode(args):
    """The mode ``args`` ask for: "dataset", "video", "rewrites" or "direct"."""
    return next((mode for mode in MODE_LIMITS if getattr(args, mode)), "direct")


def check_args(parser, args):
    """Exit with a command-line error for options that the mode asked for does not take;
    returns the mode."""
    mode = _mode(args)
    unused, reason = MODE_LIMITS.get(mode, ((), ""))
    given = [option for option in unused if getattr(args, option)]
    if given:
        parser.error(f"--{mode}: a mode of its own, without --{given[0]} ({reason})")
    if mode in CPU_MODES and args.device != "cpu":
        parser.error(f"--{mode}: runs on --device cpu")
    if mode == "dataset" and len(args.configs) != 1:
        parser.error(f"--dataset {args.dataset}: give exactly one config to run on it")
    if args.keep_exports and not args.deploy:
        parser.error("--keep-exports keeps the exports of the --deploy rows: add --deploy")
    if args.cpu_time and mode != "rewrites":
        parser.error("--cpu-time times the --rewrites mode only")
    if args.repeats < 2:
        parser.error(f"--repeats {args.repeats}: at least 2 timed runs are needed for a spread")
    return mode


def run_video_mode(args):
    if args.configs == DEFAULT_CONFIGS:
        args.configs = [str(REALTIME_CONFIG)]
    rows = run_video(args, config_models(args))
    print(format_video_table(rows, args))
    return rows


def run_rewrites_mode(args):
    clock = time.process_time if args.cpu_time else time.perf_counter
    models = config_models(args)
    results = run_rewrites(models, args.num_people, args.size, args.warmup, args.repeats, clock)
    clock_name = "CPU time" if args.cpu_time else "wall time"
    print(format_rewrites_table(results, args.num_people, args.size, clock_name))
    return results


def run_direct_mode(args):
    rows = run_direct(args)
    print(format_table(rows, args.num_people, args.device, args.size))
    if args.plot:
        plot_sweep(rows, args.plot, args.device)
    return rows


MODES = {
    "dataset": run_dataset,
    "video": run_video_mode,
    "rewrites": run_rewrites_mode,
    "direct": run_direct_mode,
}


def main(argv=None):
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.deploy == [] or (args.video and args.deploy is None):
        args.deploy = list(DEPLOY_ROWS)
    return MODES[check_args(parser, args)](args)
