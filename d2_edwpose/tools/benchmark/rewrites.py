"""The benchmark's rewrites mode (``--rewrites``): what each rewrite of ``optimize_for_inference``
buys end to end, from the model optimized with all rewrites against the model optimized with
all but one, for each rewrite in turn, all timed in the same interleaved rounds."""

import statistics
import time

import torch

from d2_edwpose.modeling.cpu_inference import REWRITES, optimize_for_inference

from .timing import (
    build_model_detecting,
    describe_cpu,
    p10_p90,
    pytorch_call,
    runtime_settings,
    time_interleaved,
)

__all__ = ["AS_BUILT", "ALL_REWRITES", "format_rewrites_table", "run_rewrites"]

# The variants of each model besides "without <rewrite>".
ALL_REWRITES = "all rewrites"
AS_BUILT = "as built"


def run_rewrites(models, num_people, size, warmup, repeats, clock=time.perf_counter):
    """{model name: {variant: seconds per call}} of every (name, config) of ``models``, on CPU:
    the model as built, optimized with all rewrites, and without each of :data:`REWRITES`."""
    torch.manual_seed(0)
    image = torch.randint(0, 256, (3, *size), dtype=torch.uint8)
    variants = {AS_BUILT: None, ALL_REWRITES: (), **{r: (r,) for r in REWRITES}}
    calls = {}
    for name, cfg in models:
        for variant, skip in variants.items():
            model = build_model_detecting(cfg, num_people)
            if skip is not None:
                optimize_for_inference(model, device="cpu", skip=skip)
            calls[(name, variant)] = (pytorch_call(model, image), num_people)
    times = time_interleaved(calls, warmup, repeats, clock)
    results = {name: {} for name, _ in models}
    for (name, variant), seconds in times.items():
        results[name][variant] = seconds
    return results


def _shares(without, with_all):
    """Per round, the share of the latency without a rewrite that the rewrite removes: calls of
    the same round ran under the same load, so each round is a paired comparison."""
    return [(t - t_all) / t for t, t_all in zip(without, with_all)]


def format_rewrites_table(results, num_people, size, clock_name="wall time"):
    """A row per rewrite, a pair of columns per model: the median latency without that rewrite
    (all others applied), and the share of it that the rewrite removes, (t_without - t_all) /
    t_without per round: median (p10 to p90 over rounds). The "as built" row's share is all
    rewrites' together."""
    names = list(results)
    rounds = len(next(iter(results[names[0]].values())))
    lines = [
        f"Rewrites mode, {size[0]}×{size[1]} input, batch 1, N = {num_people} people per image, "
        f"CPU ({describe_cpu()}), {clock_name}, random weights, all variants timed in {rounds} interleaved "
        f"rounds; {runtime_settings()}. Median latency without each rewrite (all others "
        "applied) and its share: (t_without − t_all) / t_without of each round, median "
        "(p10 to p90).",
        "",
        "| rewrite | " + " | ".join(f"{name} without | share" for name in names) + " |",
        "|---|" + "---|---|" * len(names),
    ]
    all_row = " | ".join(
        f"{1000 * statistics.median(results[name][ALL_REWRITES]):.1f} ms | –" for name in names
    )
    lines.append(f"| ({ALL_REWRITES}) | {all_row} |")
    for variant in (AS_BUILT, *REWRITES):
        cells = []
        for name in names:
            without = results[name][variant]
            shares = _shares(without, results[name][ALL_REWRITES])
            low, high = p10_p90(shares)
            cells.append(
                f"{1000 * statistics.median(without):.1f} ms "
                f"| {100 * statistics.median(shares):+.1f}% ({100 * low:+.1f} to {100 * high:+.1f})"
            )
        label = f"({AS_BUILT}: none)" if variant == AS_BUILT else variant
        lines.append(f"| {label} | " + " | ".join(cells) + " |")
    return "\n".join(lines)
