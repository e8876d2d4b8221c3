"""From a trained model to deployable files: ONNX and TorchScript exports checked against
PyTorch (:mod:`.tracing`) and INT8 quantization of the ONNX file (:mod:`.quantization`). The
files run on :mod:`d2_edwpose.deploy`, the torch-free runner."""

from .quantization import FLOAT_LAYERS, calibration_images, quantize_int8
from .tracing import (
    ONNX_OPSET,
    TORCHSCRIPT_FORMAT,
    TORCHSCRIPT_METADATA_FILE,
    TORCHSCRIPT_OUTPUT_NAMES,
    compare_torchscript_with_pytorch,
    compare_with_pytorch,
    export_onnx,
    export_torchscript,
    load_torchscript,
    pytorch_poses,
)

__all__ = [
    "FLOAT_LAYERS",
    "ONNX_OPSET",
    "TORCHSCRIPT_FORMAT",
    "TORCHSCRIPT_METADATA_FILE",
    "TORCHSCRIPT_OUTPUT_NAMES",
    "calibration_images",
    "compare_torchscript_with_pytorch",
    "compare_with_pytorch",
    "export_onnx",
    "export_torchscript",
    "load_torchscript",
    "pytorch_poses",
    "quantize_int8",
]
