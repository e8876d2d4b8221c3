"""The benchmark's deployment rows (``--deploy``): the ONNX export of a model timed through the
deployment runner, a row per runtime and precision, and the runner's steps (``--profile``)."""

import argparse
import statistics
import time
from pathlib import Path

import cv2
import numpy as np
import torch

from d2_edwpose.deploy.onnx_pose_runner import (
    OnnxPoseRunner,
    available_runtimes,
    cpu_supports_bf16,
)
from d2_edwpose.export import export_onnx, quantize_int8

__all__ = [
    "DEPLOY_ROWS",
    "EXPORT_FILES",
    "deploy_row",
    "deploy_rows",
    "deploy_runners",
    "format_runner_profile",
    "profile_runner",
    "runner_call",
]


# The deployment rows of --deploy: (runtime, precision) of the runner on the ONNX export.
DEPLOY_ROWS = (
    ("onnxruntime", "fp32"),
    ("onnxruntime", "int8"),
    ("openvino", "fp32"),
    ("openvino", "bf16"),
    ("openvino", "int8"),
)


def deploy_rows(requested):
    """The ``DEPLOY_ROWS`` asked for whose runtime is installed and which this CPU runs (a
    notice for each one left out)."""
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


# What deploy_runners writes in its folder: the float32 export, its INT8 quantization and the
# quantization's calibration image.
EXPORT_FILES = ("model.onnx", "model_int8.onnx", "calibration.png")


def deploy_runners(model, rows, image, folder):
    """{(runtime, precision): runner} of the ONNX export of ``model`` (and of its INT8
    quantization, calibrated on ``image``: timing does not depend on the calibration), written
    in ``folder`` (``EXPORT_FILES``; those of an earlier run are removed first, so that the
    folder holds what this run timed)."""
    fp32_file, int8_file, picture = paths = [Path(folder, name) for name in EXPORT_FILES]
    for path in paths:
        path.unlink(missing_ok=True)
    files = {"fp32": export_onnx(model, fp32_file)}
    if any(precision == "int8" for _, precision in rows):
        pixels = image.permute(1, 2, 0).cpu().numpy()
        cv2.imwrite(str(picture), pixels[:, :, ::-1] if model.input_format == "RGB" else pixels)
        files["int8"] = quantize_int8(files["fp32"], int8_file, [picture])
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


def deploy_row(text):
    row = tuple(text.split(":"))
    if row not in DEPLOY_ROWS:
        raise argparse.ArgumentTypeError(
            f"{text!r}: expected one of {', '.join(f'{r}:{p}' for r, p in DEPLOY_ROWS)}"
        )
    return row


def runner_call(runner, image, num_people):
    """A call of the deployment runner on ``image`` ((3, H, W) uint8 tensor in the model's
    ``INPUT.FORMAT``, as :func:`~.timing.measure_latency` takes it), returning its number of
    detections (checked against ``num_people`` by the timing). A call is what a deployed model
    does per image: pre-processing (resize, channel order), the graph on its runtime, keypoint
    decoding and scaling back to the image."""
    # The runner takes images as OpenCV reads them: (H, W, 3) BGR.
    image = image.permute(1, 2, 0).cpu().numpy()
    image = np.ascontiguousarray(image[:, :, ::-1] if runner.input_format == "RGB" else image)
    return lambda: len(runner(image)["scores"])


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
