"""What an exported file holds for the runner: the graph's input and output names, and the
exporter's metadata (d2_edwpose/export/tracing.py writes it, the runner checks it before running).
"""
import json

__all__ = [
    "ExportedModelError",
    "FILE_PRECISIONS",
    "INPUT_NAME",
    "METADATA_FORMAT",
    "METADATA_KEY",
    "OUTPUT_NAMES",
    "check_signature",
    "parse_metadata",
]

METADATA_KEY = "d2_edwpose"
METADATA_FORMAT = "d2_edwpose.keypoint_rcnn/1"
INPUT_NAME = "image"
OUTPUT_NAMES = ("boxes", "scores", "classes", "keypoint_heatmaps")
_METADATA_FIELDS = ("format", "input_format", "input_size", "score_threshold", "num_keypoints")
# Of a file's weights (the metadata's "precision").
FILE_PRECISIONS = ("fp32", "int8")
_INPUT_FORMATS = ("RGB", "BGR")


class ExportedModelError(ValueError):
    """The ONNX file cannot be read, or is not a model exported by d2_edwpose."""


def parse_metadata(path, metadata):
    """The exporter's metadata from a file's ONNX metadata (a dict of strings)."""
    if METADATA_KEY not in metadata:
        raise ExportedModelError(
            f"{path}: not a d2_edwpose pose model: its ONNX metadata has no '{METADATA_KEY}' "
            f"entry (it has {sorted(metadata) or 'none'}). Export models with "
            "`python -m d2_edwpose.tools.export_model`."
        )
    try:
        info = json.loads(metadata[METADATA_KEY])
    except json.JSONDecodeError as e:
        raise ExportedModelError(f"{path}: metadata '{METADATA_KEY}' is not JSON ({e})") from None
    missing = [field for field in _METADATA_FIELDS if field not in info]
    if missing:
        raise ExportedModelError(f"{path}: metadata '{METADATA_KEY}' lacks {missing}")
    if info["format"] != METADATA_FORMAT:
        raise ExportedModelError(
            f"{path}: exported as format {info['format']!r}; this runner reads "
            f"{METADATA_FORMAT!r}. Export the model again with this version of d2_edwpose."
        )
    if info["input_format"] not in _INPUT_FORMATS:
        raise ExportedModelError(
            f"{path}: metadata input_format={info['input_format']!r}, expected one of "
            f"{_INPUT_FORMATS}"
        )
    if info.get("precision", "fp32") not in FILE_PRECISIONS:
        raise ExportedModelError(
            f"{path}: metadata precision={info['precision']!r}, expected one of {FILE_PRECISIONS}"
        )
    return info


def check_signature(path, inputs, outputs, input_size, num_keypoints):
    """Raise ExportedModelError unless the graph's inputs and outputs are the exporter's.

    ``inputs``: [(name, shape, element type)]; ``outputs``: {name: shape}; shapes as lists
    with None or a name for a dynamic dimension.
    """
    expected = [3, *input_size]
    if inputs != [(INPUT_NAME, expected, "float32")]:
        raise ExportedModelError(
            f"{path}: the graph's inputs are {inputs}; expected one float input "
            f"'{INPUT_NAME}' of shape {expected} (the metadata's input_size)"
        )
    if sorted(outputs) != sorted(OUTPUT_NAMES) or outputs["keypoint_heatmaps"][1] != num_keypoints:
        raise ExportedModelError(
            f"{path}: the graph's outputs are {outputs}; expected {list(OUTPUT_NAMES)} with "
            f"{num_keypoints} heatmaps per box (the metadata's num_keypoints)"
        )
