"""The benchmark's direct mode: every model detects exactly N people per image, timed in
interleaved rounds (with ``--optimize`` also after ``optimize_for_inference``, with
``--deploy`` also through the deployment runner), and its table, profile and plot."""

import statistics
import tempfile
import time
from pathlib import Path

import torch
from matplotlib.figure import Figure

from detectron2 import model_zoo

from d2_edwpose.model_zoo import STOCK_R50_CONFIG
from d2_edwpose.modeling.analysis import analysis_config, analyze
from d2_edwpose.modeling.cpu_inference import optimize_for_inference

from .deploy import deploy_rows, deploy_runners, format_runner_profile, profile_runner, runner_call
from .timing import (
    build_model_detecting,
    describe_cpu,
    p10_p90,
    pytorch_call,
    runtime_settings,
    synchronize,
    time_interleaved,
)

__all__ = [
    "config_models",
    "format_profile",
    "format_table",
    "plot_sweep",
    "profile_components",
    "row_label",
    "run_direct",
]


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
        handles += [
            module.register_forward_pre_hook(start(name)),
            module.register_forward_hook(stop(name)),
        ]
    first_layer = next(keypoint_head.children())
    handles += [
        first_layer.register_forward_pre_hook(start("keypoint convs")),
        keypoint_head.score_lowres.register_forward_hook(stop("keypoint convs")),
    ]
    samples = []
    try:
        for i in range(warmup + repeats):
            synchronize(model.device)
            begin = time.perf_counter()
            model([{"image": image}])
            synchronize(model.device)
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


def config_models(args):
    """(name, config) of every model to compare."""
    files = [(Path(path).stem, path) for path in args.configs]
    if args.stock_r50:
        stock = model_zoo.get_config_file(STOCK_R50_CONFIG)
        files.append((f"detectron2 {Path(STOCK_R50_CONFIG).stem}", stock))
    models = [(name, analysis_config(path, args.size, args.opts)) for name, path in files]
    for _, cfg in models:
        cfg.MODEL.DEVICE = args.device
    return models


def run_direct(args):
    torch.manual_seed(0)
    image = torch.randint(0, 256, (3, *args.size), dtype=torch.uint8)
    models = [(name, cfg, analyze(cfg, name)) for name, cfg in config_models(args)]
    deploy = deploy_rows(args.deploy or ())
    rows, profiles, runner_profiles = [], [], []
    for num_people in sorted(set(args.sweep) | {args.num_people}):
        calls, kinds = {}, {}
        with tempfile.TemporaryDirectory() as folder:
            for name, cfg, flops in models:
                for optimized in (False, True) if args.optimize else (False,):
                    model = build_model_detecting(cfg, num_people)
                    if optimized:
                        optimize_for_inference(model)
                    kind = {"model": name, "optimized": optimized}
                    label = row_label(kind)
                    calls[label] = (pytorch_call(model, image.to(model.device)), num_people)
                    kinds[label] = (kind, flops, model)
                if num_people != args.num_people or name.startswith("detectron2 ") or not deploy:
                    continue
                model = build_model_detecting(cfg, num_people)
                exports = Path(args.keep_exports or folder) / name
                runners = deploy_runners(model, deploy, image, exports)
                for (runtime, precision), runner in runners.items():
                    kind = {"model": name, "runtime": runtime, "precision": precision}
                    label = row_label(kind)
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


def _row(kind, times, num_people, flops):
    p10, p90 = p10_p90(times)
    return {
        **kind,
        "people": num_people,
        "median_ms": 1000 * statistics.median(times),
        "p10_ms": 1000 * p10,
        "p90_ms": 1000 * p90,
        "params_m": flops["total_params"] / 1e6,
        "gflops": flops["backbone_gflops"]
        + flops["rpn_gflops"]
        + flops["box_head_gflops_at_test"]
        + num_people * flops["keypoint_head_gflops_per_roi"],
    }


def _kind(row):
    return (row.get("optimized", False), row.get("runtime"), row.get("precision", "fp32"))


def row_label(row):
    if row.get("runtime"):
        precision = row.get("precision", "fp32")
        return f"{row['model']} ({row['runtime']}{'' if precision == 'fp32' else ' ' + precision})"
    return f"{row['model']} + optimize_for_inference" if row.get("optimized") else row["model"]


def _speedup(reference_ms, ms):
    return f"{reference_ms / ms:.2f}×" if reference_ms else "–"


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
            f"| {row_label(r)} | {r['median_ms']:.0f} ms ({r['p10_ms']:.0f}–{r['p90_ms']:.0f}) "
            f"| {1000 / r['median_ms']:.1f} "
            f"| {_speedup(vanilla.get(_kind(r)), r['median_ms'])} "
            f"| {_speedup(stock, r['median_ms'])} "
            f"| {r['params_m']:.1f} M | {r['gflops']:.1f} |"
        )
    return "\n".join(lines)


def plot_sweep(rows, output_file, device):
    # A Figure of its own, without pyplot: no GUI backend, no global figure state.
    fig = Figure(figsize=(7, 4.5))
    ax = fig.subplots()
    for name in dict.fromkeys(map(row_label, rows)):
        points = sorted((r["people"], r["median_ms"]) for r in rows if row_label(r) == name)
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
