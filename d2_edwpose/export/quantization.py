"""INT8 post-training quantization of an exported ONNX pose model.

onnxruntime's static quantization (``quantize_static``) rewrites the float32 graph of
:func:`d2_edwpose.export.export_onnx` into a QDQ graph: the weights of the convolutions and
fully connected layers of the backbone, FPN, RPN and heads are quantized to int8 per output
channel, and their inputs to int8 (onnxruntime's advice for x86 CPUs, where uint8 inputs can
saturate its int8 kernels) with ranges calibrated on the user's images, which run through the
runner's own pre-processing. Kept in float32, because precision matters there and
they cost little: the layers whose outputs decide the detections -- the RPN's objectness and
box deltas (they feed NMS), the box predictor's scores and box regression, and the keypoint
heatmap logits (``score_lowres``) --, the depthwise convolutions (see ``_stays_float``) and
every non-convolution operation (NMS, RoIAlign, TopK, ...). OpenVINO runs the QDQ graph with
int8 kernels; onnxruntime runs it too, slowly (docs/deploy.md has the measurements).
"""

import json
import os
import tempfile
from pathlib import Path

import cv2

from ..deploy.onnx_pose_runner import INPUT_NAME, METADATA_KEY, OnnxPoseRunner
from ..utils.atomic_files import atomic_open
from ..utils.image_files import IMAGE_SUFFIXES, is_image_file

__all__ = ["FLOAT_LAYERS", "calibration_images", "quantize_int8"]

# Parts of the ONNX node names (the exporter names nodes by module path) of the layers that
# stay in float32 (see the module docstring).
FLOAT_LAYERS = (
    "rpn_head/objectness_logits",
    "rpn_head/anchor_deltas",
    "box_predictor/",
    "keypoint_head/score_lowres",
)


def _is_depthwise(node):
    return node.op_type == "Conv" and any(a.name == "group" and a.i > 1 for a in node.attribute)


def _stays_float(node):
    """Whether quantize_int8 keeps ``node`` in float32: the decisive layers of ``FLOAT_LAYERS``,
    and the depthwise convolutions, which cost more keypoint AP in int8 than they buy in speed
    (docs/deploy.md)."""
    return _is_depthwise(node) or any(part in node.name for part in FLOAT_LAYERS)


def calibration_images(folder, max_images):
    """Paths of the first ``max_images`` images (sorted by name) in ``folder``; an error
    naming the folder when it has none or cannot be read."""
    folder = Path(folder)
    if not folder.is_dir():
        raise FileNotFoundError(f"--calibration {folder}: no such folder")
    paths = sorted(p for p in folder.iterdir() if is_image_file(p))
    if not paths:
        raise FileNotFoundError(
            f"--calibration {folder}: no image files ({', '.join(sorted(IMAGE_SUFFIXES))}) in it"
        )
    return paths[:max_images]


class _CalibrationReader:
    """onnxruntime's CalibrationDataReader protocol: the graph inputs of the images, one by
    one, pre-processed as the runner does."""

    def __init__(self, runner, paths):
        self.runner = runner
        self.paths = iter(paths)

    def get_next(self):
        path = next(self.paths, None)
        if path is None:
            return None
        image = cv2.imread(str(path))
        if image is None:
            raise ValueError(f"--calibration: {path} is not a readable image file")
        return {INPUT_NAME: self.runner.preprocess(image)}


def quantize_int8(onnx_path, output_path, image_paths):
    """Write the INT8 QDQ version of the float32 export ``onnx_path`` to ``output_path``
    (atomically), calibrated on ``image_paths``; its metadata says ``"precision": "int8"``
    and how many images calibrated it. Returns ``output_path``."""
    import onnx
    from onnxruntime.quantization import CalibrationMethod, QuantFormat, QuantType, quantize_static
    from onnxruntime.quantization.shape_inference import quant_pre_process

    runner = OnnxPoseRunner(onnx_path, runtime="onnxruntime")
    if runner.precision != "fp32":
        raise ValueError(f"{onnx_path}: already quantized ({runner.precision})")
    model = onnx.load(os.fspath(onnx_path))
    float_nodes = [node.name for node in model.graph.node if _stays_float(node)]
    with tempfile.TemporaryDirectory() as folder:
        prepared = os.path.join(folder, "prepared.onnx")
        quantized = os.path.join(folder, "quantized.onnx")
        # Shape inference, as onnxruntime recommends before quantizing. Not its graph
        # optimisation: that inlines each HardSwish as x * HardSigmoid(x), which OpenVINO then
        # runs with a reference kernel on planar copies, slower (docs/deploy.md); the same
        # layers are quantized either way.
        quant_pre_process(
            os.fspath(onnx_path), prepared, skip_optimization=True, skip_symbolic_shape=True
        )
        quantize_static(
            prepared,
            quantized,
            _CalibrationReader(runner, image_paths),
            quant_format=QuantFormat.QDQ,
            op_types_to_quantize=["Conv", "Gemm", "MatMul"],
            nodes_to_exclude=float_nodes,
            per_channel=True,
            weight_type=QuantType.QInt8,
            activation_type=QuantType.QInt8,
            calibrate_method=CalibrationMethod.MinMax,
        )
        model = onnx.load(quantized)
    metadata = {prop.key: prop.value for prop in model.metadata_props}
    info = json.loads(metadata[METADATA_KEY])
    info.update(precision="int8", calibration_images=len(image_paths))
    onnx.helper.set_model_props(model, {**metadata, METADATA_KEY: json.dumps(info)})
    output_path = Path(output_path)
    with atomic_open(output_path, "wb") as f:
        f.write(model.SerializeToString())
    return output_path
