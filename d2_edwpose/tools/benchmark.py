"""End-to-end inference latency of Keypoint R-CNN configs at 320x320, batch 1.

    # direct mode (no data): every model detects exactly N people per image
    python -m d2_edwpose.tools.benchmark --stock-r50 --num-people 20 --sweep 1 5 20 50 100 \
        --plot output/benchmark/latency_vs_people.png
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
INT8 quantization (:mod:`d2_edwpose.quantization`), OpenVINO in bfloat16 where the CPU has
it. All models of one N are timed in interleaved rounds, one call of each per round, so that
the machine's drift hits every row alike; the table's header names the CPU. With ``--optimize`` every model is also measured after
:func:`d2_edwpose.modeling.cpu_inference.optimize_for_inference`, in a row of its own; speed-ups
"vs vanilla" compare rows of the same kind, "vs stock R50" always compare with detectron2's
model as it is built (what its users run).
"""
import argparse
import itertools
import os
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from detectron2 import model_zoo
from detectron2.data import build_detection_test_loader
from detectron2.evaluation import DatasetEvaluators, inference_on_dataset
from detectron2.modeling import build_model
from detectron2.utils.logger import setup_logger

from d2_edwpose.checkpoint import SafeCheckpointer
from d2_edwpose.data import register_config_datasets
from d2_edwpose.modeling.cpu_inference import optimize_for_inference
from d2_edwpose.tools.analyze_model import (
    PAPER_CONFIGS,
    REALTIME_CONFIG,
    STOCK_R50,
    analyze,
    load_config,
)

__all__ = [
    "describe_cpu",
    "fix_num_detections",
    "profile_runner",
    "measure_latency",
    "runner_call",
    "time_interleaved",
    "main",
]


def fix_num_detections(cfg, num_people):
    """Make every image yield exactly ``num_people`` detections (given enough proposals)."""
    cfg.MODEL.ROI_HEADS.SCORE_THRESH_TEST = 0.0
    cfg.MODEL.ROI_HEADS.NMS_THRESH_TEST = 1.0
    cfg.TEST.DETECTIONS_PER_IMAGE = num_people
    return cfg


def build_benchmark_model(cfg):
    """The model of ``cfg`` with random weights and zeroed output layers, in eval mode.

    With random weights the outputs are arbitrary in scale: a deep network (ResNet-50 with
    identity FrozenBN) sends every RPN proposal to the whole image, so that NMS leaves a
    handful, its box scores saturate to 0 and its heatmap logits are so large that
    detectron2's keypoint decoding overflows. Zeroing the RPN's and the box head's
    regressions makes the proposals the anchors and the detections the proposals, zeroing the
    box classifier gives every proposal the same score, and zeroing the heatmap predictor keeps
    the decoding finite, for every backbone. The computation, and so the timing, is unchanged.
    """
    torch.manual_seed(0)
    model = build_model(cfg).eval()
    rpn_deltas = model.proposal_generator.rpn_head.anchor_deltas
    box_predictor = model.roi_heads.box_predictor
    heatmaps = model.roi_heads.keypoint_head.score_lowres
    for layer in (rpn_deltas, box_predictor.bbox_pred, box_predictor.cls_score, heatmaps):
        torch.nn.init.zeros_(layer.weight)
        torch.nn.init.zeros_(layer.bias)
    return model


def _synchronize(device):
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def measure_latency(model, image, num_people, warmup, repeats):
    """Seconds per call of ``model`` on ``image``, one per repeat; checks the detections."""
    _synchronize(model.device)
    calls = {"the model": (_pytorch_call(model, image), num_people)}
    return time_interleaved(calls, warmup, repeats)["the model"]


def runner_call(runner, image, num_people):
    """A call of the deployment runner on ``image`` ((3, H, W) uint8 tensor in the model's
    ``INPUT.FORMAT``, as :func:`measure_latency` takes it), returning its number of detections
    (checked against ``num_people`` by the timing). A call is what a deployed model does per
    image: pre-processing (resize, channel order), the graph on its runtime, keypoint decoding
    and scaling back to the image."""
    # The runner takes images as OpenCV reads them: (H, W, 3) BGR.
    image = image.permute(1, 2, 0).cpu().numpy()
    image = np.ascontiguousarray(image[:, :, ::-1] if runner.input_format == "RGB" else image)
    return lambda: len(runner(image)["scores"])


def _component_modules(model):
    """name -> module of the parts of a Keypoint R-CNN whose forward is timed by --profile."""
    heads = model.roi_heads
    return {
        "backbone": model.backbone,
        "RPN": model.proposal_generator,
        "box RoIAlign": heads.box_pooler,
        "box head": heads.box_head,
        "box predictor": heads.box_predictor,
        "keypoint RoIAlign": heads.keypoint_pooler,
        "keypoint head": heads.keypoint_head,
    }


@torch.no_grad()
def profile_components(model, image, warmup, repeats):
    """Median milliseconds per call spent in each part of ``model`` (forward hooks).

    "keypoint convs" is the keypoint head from its first layer to its heatmap predictor,
    "keypoint decoding" the rest of the head (upsampling, heatmaps to keypoints); "other" is
    what no part covers: input resize and normalisation, box decoding and NMS, output rescaling.
    The box predictor (two small fc layers, under a millisecond) is timed but not a column of
    :func:`format_profile`.
    """
    parts = _component_modules(model)
    keypoint_head = parts["keypoint head"]
    spans = {}

    def start(name):
        return lambda *_: spans.__setitem__(name, [time.perf_counter(), None])

    def stop(name):
        return lambda *_: spans[name].__setitem__(1, time.perf_counter())

    handles = []
    for name, module in parts.items():
        handles += [module.register_forward_pre_hook(start(name)), module.register_forward_hook(stop(name))]
    first_layer = next(keypoint_head.children())
    handles += [
        first_layer.register_forward_pre_hook(start("keypoint convs")),
        keypoint_head.score_lowres.register_forward_hook(stop("keypoint convs")),
    ]
    samples = []
    try:
        for i in range(warmup + repeats):
            _synchronize(model.device)
            begin = time.perf_counter()
            model([{"image": image}])
            _synchronize(model.device)
            total = time.perf_counter() - begin
            if i < warmup:
                continue
            ms = {name: 1000 * (end - begin_) for name, (begin_, end) in spans.items()}
            ms["keypoint decoding"] = ms["keypoint head"] - ms["keypoint convs"]
            ms["other"] = 1000 * total - sum(ms[name] for name in parts)
            ms["total"] = 1000 * total
            samples.append(ms)
    finally:
        for handle in handles:
            handle.remove()
    return {name: statistics.median(s[name] for s in samples) for name in samples[0]}


PROFILE_COLUMNS = (
    "backbone", "RPN", "box RoIAlign", "box head", "keypoint RoIAlign", "keypoint convs",
    "keypoint decoding", "other", "total",
)  # fmt: skip


def format_profile(profiles, num_people):
    lines = [
        f"Time per part, median ms, N = {num_people} (model with CUDA synchronised only at the "
        "ends: GPU parts are not separated).",
        "",
        "| model | " + " | ".join(PROFILE_COLUMNS) + " |",
        "|---|" + "---|" * len(PROFILE_COLUMNS),
    ]
    for label, ms in profiles:
        lines.append(f"| {label} | " + " | ".join(f"{ms[c]:.0f}" for c in PROFILE_COLUMNS) + " |")
    return "\n".join(lines)


RUNNER_PROFILE_COLUMNS = ("pre-processing", "graph", "post-processing", "total")


def profile_runner(runner, image, warmup, repeats):
    """Median ms of the deployment runner's three steps on ``image`` (as ``runner_call``
    takes it): pre-processing (resize, channel order), the graph on its runtime, and
    post-processing (keypoint decoding in numpy, scaling back to the image)."""
    pixels = image.permute(1, 2, 0).cpu().numpy()
    pixels = np.ascontiguousarray(pixels[:, :, ::-1] if runner.input_format == "RGB" else pixels)
    times = {name: [] for name in RUNNER_PROFILE_COLUMNS}
    for index in range(warmup + repeats):
        start = time.perf_counter()
        graph_input = runner.preprocess(pixels)
        preprocessed = time.perf_counter()
        outputs = runner.run_graph(graph_input)
        ran = time.perf_counter()
        runner.postprocess(outputs, pixels.shape[:2])
        end = time.perf_counter()
        if index >= warmup:
            for name, seconds in zip(
                RUNNER_PROFILE_COLUMNS,
                (preprocessed - start, ran - preprocessed, end - ran, end - start),
            ):
                times[name].append(seconds)
    return {name: 1000 * statistics.median(seconds) for name, seconds in times.items()}


def format_runner_profile(profiles, num_people):
    lines = [
        f"Deployment runner, time per step, median ms, N = {num_people}.",
        "",
        "| model | " + " | ".join(RUNNER_PROFILE_COLUMNS) + " |",
        "|---|" + "---|" * len(RUNNER_PROFILE_COLUMNS),
    ]
    for label, ms in profiles:
        lines.append(
            f"| {label} | " + " | ".join(f"{ms[c]:.1f}" for c in RUNNER_PROFILE_COLUMNS) + " |"
        )
    return "\n".join(lines)


def _models(args):
    """(name, config) of every model to compare."""
    size = tuple(args.size)
    models = [(Path(path).stem, load_config(path, size)) for path in args.configs]
    if args.stock_r50:
        stock = load_config(model_zoo.get_config_file(STOCK_R50), size)
        models.append((f"detectron2 {Path(STOCK_R50).stem}", stock))
    for _, cfg in models:
        cfg.merge_from_list(args.opts)
        cfg.MODEL.DEVICE = args.device
    return models


def time_interleaved(calls, warmup, repeats):
    """Seconds per call of each of ``calls`` ({label: (call, expected detections)}), timed in
    rounds -- one call of each per round, in turn -- so that a drift of the machine's speed
    during the run hits every label alike. ``warmup`` rounds are not timed."""
    times = {label: [] for label in calls}
    for round_index in range(warmup + repeats):
        for label, (call, num_people) in calls.items():
            start = time.perf_counter()
            found = call()
            elapsed = time.perf_counter() - start
            if found != num_people:
                raise RuntimeError(f"expected {num_people} detections, {label} returned {found}")
            if round_index >= warmup:
                times[label].append(elapsed)
    return times


# The deployment rows of --deploy: (runtime, precision) of the runner on the ONNX export.
DEPLOY_ROWS = (
    ("onnxruntime", "fp32"),
    ("onnxruntime", "int8"),
    ("openvino", "fp32"),
    ("openvino", "bf16"),
    ("openvino", "int8"),
)


def _deploy_rows(requested):
    """The ``DEPLOY_ROWS`` asked for whose runtime is installed and which this CPU runs (a
    notice for each one left out)."""
    from d2_edwpose.deploy.onnx_pose_runner import available_runtimes, cpu_supports_bf16

    installed = available_runtimes()
    rows = []
    for runtime, precision in requested:
        if runtime not in installed:
            print(f"--deploy {runtime}:{precision}: {runtime} is not installed; row left out")
        elif precision == "bf16" and not cpu_supports_bf16():
            print(f"--deploy {runtime}:bf16: this CPU has no native bfloat16; row left out")
        else:
            rows.append((runtime, precision))
    return rows


def _runners(model, rows, image, folder):
    """{(runtime, precision): runner} of the ONNX export of ``model`` (and of its INT8
    quantization, calibrated on ``image``: timing does not depend on the calibration)."""
    import cv2

    from d2_edwpose.deploy.onnx_pose_runner import OnnxPoseRunner
    from d2_edwpose.export import export_onnx
    from d2_edwpose.quantization import quantize_int8

    files = {"fp32": export_onnx(model, Path(folder) / "model.onnx")}
    if any(precision == "int8" for _, precision in rows):
        picture = Path(folder) / "calibration.png"
        pixels = image.permute(1, 2, 0).cpu().numpy()
        cv2.imwrite(str(picture), pixels[:, :, ::-1] if model.input_format == "RGB" else pixels)
        files["int8"] = quantize_int8(files["fp32"], Path(folder) / "model_int8.onnx", [picture])
    threads = torch.get_num_threads()  # the cores PyTorch runs on
    return {
        (runtime, precision): OnnxPoseRunner(
            files["int8" if precision == "int8" else "fp32"],
            num_threads=threads,
            runtime=runtime,
            precision="bf16" if precision == "bf16" else "fp32",
        )
        for runtime, precision in rows
    }


def run_direct(args):
    torch.manual_seed(0)
    image = torch.randint(0, 256, (3, *args.size), dtype=torch.uint8)
    models = [(name, cfg, analyze(cfg, name)) for name, cfg in _models(args)]
    deploy = _deploy_rows(args.deploy or ())
    rows, profiles, runner_profiles = [], [], []
    for num_people in sorted(set(args.sweep) | {args.num_people}):
        calls, kinds = {}, {}
        with tempfile.TemporaryDirectory() as folder:
            for index, (name, cfg, flops) in enumerate(models):
                for optimized in (False, True) if args.optimize else (False,):
                    model = build_benchmark_model(fix_num_detections(cfg.clone(), num_people))
                    if optimized:
                        optimize_for_inference(model)
                    kind = {"model": name, "optimized": optimized}
                    label = _label(kind)
                    calls[label] = (_pytorch_call(model, image.to(model.device)), num_people)
                    kinds[label] = (kind, flops, model)
                if num_people != args.num_people or name.startswith("detectron2 ") or not deploy:
                    continue
                model = build_benchmark_model(fix_num_detections(cfg.clone(), num_people))
                runners = _runners(model, deploy, image, Path(folder) / str(index))
                for (runtime, precision), runner in runners.items():
                    kind = {"model": name, "runtime": runtime, "precision": precision}
                    label = _label(kind)
                    calls[label] = (runner_call(runner, image, num_people), num_people)
                    kinds[label] = (kind, flops, runner)
            times = time_interleaved(calls, args.warmup, args.repeats)
        # model: the PyTorch model, or the runner of a deployment row.
        for label, (kind, flops, model) in kinds.items():
            rows.append(_row(kind, times[label], num_people, flops))
            print(f"{label} N={num_people}: {rows[-1]['median_ms']:.1f} ms", flush=True)
            if not args.profile or num_people != args.num_people:
                continue
            if "runtime" in kind:
                profile = profile_runner(model, image, args.warmup, args.repeats)
                runner_profiles.append((label, profile))
            else:
                profile = profile_components(
                    model, image.to(model.device), args.warmup, args.repeats
                )
                profiles.append((label, profile))
    if profiles:
        print(format_profile(profiles, args.num_people))
    if runner_profiles:
        print(format_runner_profile(runner_profiles, args.num_people))
    return rows


def _pytorch_call(model, image):
    inputs = [{"image": image}]

    @torch.no_grad()
    def call():
        (output,) = model(inputs)
        _synchronize(model.device)
        return len(output["instances"])

    return call


def _row(kind, times, num_people, flops):
    quantiles = statistics.quantiles(times, n=10)
    return {
        **kind,
        "people": num_people,
        "median_ms": 1000 * statistics.median(times),
        "p10_ms": 1000 * quantiles[0],
        "p90_ms": 1000 * quantiles[-1],
        "params_m": flops["total_params"] / 1e6,
        "gflops": flops["backbone_gflops"] + flops["rpn_gflops"]
        + flops["box_head_gflops_at_test"] + num_people * flops["keypoint_head_gflops_per_roi"],
    }


def _kind(row):
    return (row.get("optimized", False), row.get("runtime"), row.get("precision", "fp32"))


def _label(row):
    if row.get("runtime"):
        precision = row.get("precision", "fp32")
        return f"{row['model']} ({row['runtime']}{'' if precision == 'fp32' else ' ' + precision})"
    return f"{row['model']} + optimize_for_inference" if row.get("optimized") else row["model"]


def _speedup(reference_ms, ms):
    return f"{reference_ms / ms:.2f}×" if reference_ms else "–"


# Process settings that change CPU latency (see the README's "CPU settings"); the table states them.
RUNTIME_SETTINGS = ("OMP_NUM_THREADS", "OMP_WAIT_POLICY", "GLIBC_TUNABLES")


def runtime_settings() -> str:
    return ", ".join(f"{name}={os.environ.get(name, 'unset')}" for name in RUNTIME_SETTINGS)


# /proc/cpuinfo flags of the instruction sets that decide CPU inference speed, by name.
_ISA_FLAGS = (
    ("AVX2", "avx2"),
    ("AVX-512", "avx512f"),
    ("AVX-512 VNNI", "avx512_vnni"),
    ("AVX-VNNI", "avx_vnni"),
    ("AVX-512 BF16", "avx512_bf16"),
    ("AMX", "amx_tile"),
)


def describe_cpu(cpuinfo="/proc/cpuinfo"):
    """The CPU a measurement ran on: model name, the cores used and available, and the vector
    instruction sets of ``_ISA_FLAGS`` it has (from ``/proc/cpuinfo`` where it exists)."""
    name, flags = "unknown CPU", set()
    if os.path.exists(cpuinfo):
        with open(cpuinfo) as f:
            for line in f:
                key, _, value = line.partition(":")
                if key.strip() == "model name" and name == "unknown CPU":
                    name = value.strip()
                elif key.strip() == "flags" and not flags:
                    flags = set(value.split())
    isa = [label for label, flag in _ISA_FLAGS if flag in flags] or ["no AVX2"]
    return (
        f"{name}, {torch.get_num_threads()} of {os.cpu_count()} cores, {', '.join(isa)}"
    )


def format_table(rows, num_people, device, size):
    rows = [r for r in rows if r["people"] == num_people]
    vanilla = {_kind(r): r["median_ms"] for r in rows if r["model"].endswith("_vanilla")}
    stock = next(
        (
            r["median_ms"]
            for r in rows
            if r["model"].startswith("detectron2 ") and _kind(r) == (False, None, "fp32")
        ),
        None,
    )
    lines = [
        f"Direct mode, {size[0]}×{size[1]} input, batch 1, N = {num_people} people per image, "
        f"device {device} ({describe_cpu() if device == 'cpu' else torch.cuda.get_device_name()}), "
        f"{torch.get_num_threads()} threads, random weights, models timed in interleaved rounds; "
        f"{runtime_settings()}.",
        "",
        "| model | latency median (p10–p90) | FPS | vs vanilla | vs stock R50 | params | GFLOPs at N |",
        "|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        lines.append(
            f"| {_label(r)} | {r['median_ms']:.0f} ms ({r['p10_ms']:.0f}–{r['p90_ms']:.0f}) "
            f"| {1000 / r['median_ms']:.1f} "
            f"| {_speedup(vanilla.get(_kind(r)), r['median_ms'])} "
            f"| {_speedup(stock, r['median_ms'])} "
            f"| {r['params_m']:.1f} M | {r['gflops']:.1f} |"
        )
    return "\n".join(lines)


def plot_sweep(rows, output_file, device):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4.5))
    for name in dict.fromkeys(map(_label, rows)):
        points = sorted((r["people"], r["median_ms"]) for r in rows if _label(r) == name)
        if len(points) > 1:  # models measured at one N only (--deploy) are in the table
            ax.plot(*zip(*points), marker="o", label=name)
    ax.set_xlabel("people detected per image (N)")
    ax.set_ylabel("latency per image, median (ms)")
    ax.set_title(f"Keypoint R-CNN at 320×320, batch 1, {device}, {torch.get_num_threads()} threads")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    Path(output_file).parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(output_file, dpi=100)
    plt.close(fig)


def run_dataset(args):
    """detectron2's ``inference_on_dataset`` on ``args.dataset`` with the one config given;
    its timer logs the total and the pure compute time per image."""
    setup_logger(name="detectron2")  # where detectron2's timer logs
    (path,) = args.configs
    cfg = load_config(path, tuple(args.size))
    cfg.merge_from_list(args.opts)
    cfg.MODEL.DEVICE = args.device
    register_config_datasets(cfg)
    model = build_model(cfg).eval()
    SafeCheckpointer(model).resume_or_load(cfg.MODEL.WEIGHTS, resume=False)
    if args.optimize:
        optimize_for_inference(model)
    loader = build_detection_test_loader(cfg, args.dataset)
    # No evaluator: only detectron2's timer, which logs "Total inference (pure compute) time".
    inference_on_dataset(model, loader, DatasetEvaluators([]))


def _deploy_row(text):
    row = tuple(text.split(":"))
    if row not in DEPLOY_ROWS:
        raise argparse.ArgumentTypeError(
            f"{text!r}: expected one of {', '.join(f'{r}:{p}' for r, p in DEPLOY_ROWS)}"
        )
    return row


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument(
        "configs",
        nargs="*",
        default=[str(p) for p in (*PAPER_CONFIGS, REALTIME_CONFIG)],
        help="configs to measure (default: the paper's three and the realtime config); "
        "exactly one with --dataset",
    )
    parser.add_argument("--stock-r50", action="store_true", help=f"add detectron2's {STOCK_R50}")
    parser.add_argument(
        "--optimize",
        action="store_true",
        help="also measure every model after optimize_for_inference (a row of its own)",
    )
    parser.add_argument(
        "--deploy",
        nargs="*",
        type=_deploy_row,
        metavar="RUNTIME:PRECISION",
        help="also export each d2_edwpose model to ONNX and time the deployment runner at "
        "--num-people, a row per runtime and precision: any of "
        + ", ".join(f"{r}:{p}" for r, p in DEPLOY_ROWS)
        + " (default: all)",
    )
    parser.add_argument(
        "--profile",
        action="store_true",
        help="also print the time of each part (backbone, RPN, heads, ...) at --num-people, and "
        "of the deployment runner's steps (pre-processing, graph, post-processing)",
    )
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--size", type=int, nargs=2, default=(320, 320), metavar=("H", "W"))
    parser.add_argument("--num-people", type=int, default=20, help="N of the table")
    parser.add_argument("--sweep", type=int, nargs="*", default=[], help="more values of N to plot")
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--repeats", type=int, default=10)
    parser.add_argument("--plot", help="PNG of latency against N (with --sweep)")
    parser.add_argument("--dataset", help="dataset mode: a registered dataset name")
    parser.add_argument("--opts", nargs=argparse.REMAINDER, default=[], help="KEY VALUE overrides")
    args = parser.parse_args(argv)
    if args.deploy == []:
        args.deploy = list(DEPLOY_ROWS)
    if args.repeats < 2:
        parser.error(f"--repeats {args.repeats}: at least 2 timed runs are needed for a spread")
    if args.dataset:
        if len(args.configs) != 1:
            parser.error(f"--dataset {args.dataset}: give exactly one config to run on it")
        return run_dataset(args)
    rows = run_direct(args)
    print(format_table(rows, args.num_people, args.device, args.size))
    if args.plot:
        plot_sweep(rows, args.plot, args.device)
    return rows


if __name__ == "__main__":
    main()
