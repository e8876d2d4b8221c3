"""How the benchmark times a model: fixed work per image, interleaved rounds, and the
machine it ran on."""

import argparse
import os
import statistics
import time

import torch

from detectron2.modeling import build_model

__all__ = [
    "build_benchmark_model",
    "build_model_detecting",
    "describe_cpu",
    "fix_num_detections",
    "frame_size",
    "measure_latency",
    "p10_p90",
    "pytorch_call",
    "runtime_settings",
    "synchronize",
    "time_interleaved",
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


def build_model_detecting(cfg, num_people):
    """:func:`build_benchmark_model` of a copy of ``cfg`` that detects exactly ``num_people``
    people per image (:func:`fix_num_detections`)."""
    return build_benchmark_model(fix_num_detections(cfg.clone(), num_people))


def synchronize(device):
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def measure_latency(model, image, num_people, warmup, repeats):
    """Seconds per call of ``model`` on ``image``, one per repeat; checks the detections."""
    synchronize(model.device)
    calls = {"the model": (pytorch_call(model, image), num_people)}
    return time_interleaved(calls, warmup, repeats)["the model"]


def pytorch_call(model, image):
    inputs = [{"image": image}]

    @torch.no_grad()
    def call():
        (output,) = model(inputs)
        synchronize(model.device)
        return len(output["instances"])

    return call


def time_interleaved(calls, warmup, repeats, clock=time.perf_counter):
    """Seconds per call of each of ``calls`` ({label: (call, expected detections)}), timed in
    rounds -- one call of each per round, in turn -- so that a drift of the machine's speed
    during the run hits every label alike. ``warmup`` rounds are not timed. ``clock`` is wall
    time; ``time.process_time`` counts only this process's CPU time, which on one thread
    leaves out the time that other processes of a shared machine ran."""
    times = {label: [] for label in calls}
    for round_index in range(warmup + repeats):
        for label, (call, num_people) in calls.items():
            start = clock()
            found = call()
            elapsed = clock() - start
            if found != num_people:
                raise RuntimeError(f"expected {num_people} detections, {label} returned {found}")
            if round_index >= warmup:
                times[label].append(elapsed)
    return times


# Process settings that change CPU latency (docs/speed.md, "CPU settings"); the table states them.
RUNTIME_SETTINGS = ("OMP_NUM_THREADS", "OMP_WAIT_POLICY", "GLIBC_TUNABLES")


def p10_p90(values):
    """The 10th and 90th percentiles of ``values``, the spread every table of the benchmark
    states (one value: itself twice), interpolated between the values: never outside the
    fastest and the slowest round (statistics' default method extrapolates beyond them for
    few rounds, to a negative FPS for two)."""
    if len(values) < 2:
        return values[0], values[0]
    deciles = statistics.quantiles(values, n=10, method="inclusive")
    return deciles[0], deciles[-1]


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
    return f"{name}, {torch.get_num_threads()} of {os.cpu_count()} cores, {', '.join(isa)}"


def frame_size(text):
    """``WIDTHxHEIGHT`` on the command line as ``(width, height)``."""
    try:
        width, height = (int(v) for v in text.lower().split("x"))
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"{text!r}: expected WIDTHxHEIGHT, e.g. 1280x720"
        ) from None
    return width, height
