"""Run a d2_edwpose Keypoint R-CNN exported to ONNX with OpenVINO or onnxruntime on the CPU.

This file is self-contained: it needs numpy, opencv-python and OpenVINO or onnxruntime, and
neither PyTorch nor detectron2, so it can be copied next to the ``.onnx`` file into a service::

    python onnx_pose_runner.py model.onnx photo.jpg [--runtime openvino|onnxruntime]
        [--precision fp32|bf16] [--score-threshold 0.5] [--output poses.json]

    from onnx_pose_runner import OnnxPoseRunner
    runner = OnnxPoseRunner("model.onnx")  # or "model_int8.onnx"; runtime=, precision="bf16"
    poses = runner(cv2.imread("photo.jpg"))  # a BGR image, as OpenCV reads it
    poses["boxes"]      # (N, 4) float32, XYXY in the pixel coordinates of the image given
    poses["scores"]     # (N,) float32
    poses["classes"]    # (N,) int64 (0 = person)
    poses["keypoints"]  # (N, K, 3) float32: x, y, score of each keypoint
    runner.keypoint_names  # their names (COCO's 17 person keypoints, or the dataset's)

The exported graph (``python -m d2_edwpose.tools.export_model``) takes one image of the
model's fixed input size (``INPUT.FIXED_SIZE``, 320x320) and returns boxes, scores and classes
after score threshold and NMS, and the keypoint heatmap logits of each box, all in the
coordinates of that fixed-size image. It normalises the pixels itself (``MODEL.PIXEL_MEAN``,
``MODEL.PIXEL_STD``). This runner does the rest with the PyTorch model's formulas, in float32:

* pre-processing (``FixedInputSizeRCNN``): channel order of ``INPUT.FORMAT``, then an
  antialiased bilinear resize to the fixed size (PyTorch's ``F.interpolate(mode="bilinear",
  antialias=True)``, re-implemented in numpy);
* keypoint decoding (detectron2's ``heatmaps_to_keypoints``): each box's heatmaps are
  upsampled to the box size with PyTorch's bicubic interpolation, and the arg-max gives a
  keypoint and its score. It is done here because its per-box loop over box-sized maps
  cannot be exported to ONNX by PyTorch's exporter, and costs little in numpy;
* post-processing (detectron2's ``detector_postprocess``): boxes and keypoints scaled back to
  the image given, boxes clipped to it, empty boxes dropped.

What the runner needs to know (fixed size, channel order, the score threshold applied in the
graph, the keypoint names, the precision of an INT8 file) is stored in the ONNX file's metadata
under the key ``d2_edwpose``. Both runtimes run the same file with the same pre- and
post-processing; OpenVINO also runs its float operations in bfloat16 (``precision="bf16"``) and
INT8 files fast.
"""
import argparse
import importlib.util
import json
import os
import sys
import warnings

import cv2
import numpy as np

__all__ = [
    "ExportedModelError",
    "OnnxPoseRunner",
    "heatmaps_to_keypoints",
    "resize_bilinear_antialiased",
    "METADATA_KEY",
    "METADATA_FORMAT",
    "INPUT_NAME",
    "OUTPUT_NAMES",
    "PRECISIONS",
    "RUNTIMES",
    "available_runtimes",
    "cpu_supports_bf16",
]

# The contract between the exporter (d2_edwpose/export.py) and this runner.
METADATA_KEY = "d2_edwpose"
METADATA_FORMAT = "d2_edwpose.keypoint_rcnn/1"
INPUT_NAME = "image"
OUTPUT_NAMES = ("boxes", "scores", "classes", "keypoint_heatmaps")
_METADATA_FIELDS = ("format", "input_format", "input_size", "score_threshold", "num_keypoints")
# The runtimes, in the order of preference when both are installed: OpenVINO runs bfloat16
# and INT8 graphs, onnxruntime neither fast (docs/deploy.md has the measurements).
RUNTIMES = ("openvino", "onnxruntime")
# Of the float operations; of a file's weights (the metadata's "precision").
PRECISIONS = ("fp32", "bf16")
FILE_PRECISIONS = ("fp32", "int8")
_INPUT_FORMATS = ("RGB", "BGR")

# PyTorch's (and OpenCV's) bicubic convolution coefficient.
_CUBIC_A = -0.75


class ExportedModelError(ValueError):
    """The ONNX file cannot be read, or is not a model exported by d2_edwpose."""


# ----------------------------------------------------------------------------- pre-processing
def _antialiased_bilinear_taps(in_size, out_size):
    """Source indices (out_size, taps) and normalised weights of PyTorch's antialiased
    bilinear resize along one axis (the kernel of PIL's bilinear filter), computed with
    PyTorch's float32 and float64 steps so that the weights are the same to the last bit.

    When shrinking by ``scale`` the triangle filter is widened to ``scale`` source pixels
    each side, which averages away what the smaller image cannot represent; when enlarging it
    is plain bilinear interpolation with half-pixel centres.
    """
    f32, f64 = np.float32, np.float64
    scale = f32(in_size) / f32(out_size)
    support = max(scale, f32(1))
    inv_scale = f32(1 / f64(scale)) if scale >= 1 else f32(1)
    centers = (f64(scale) * (np.arange(out_size) + 0.5)).astype(f32)
    # int64 truncation, as in PyTorch (operands are >= 0 after the max/min).
    first = np.maximum(((centers - support).astype(f64) + 0.5).astype(np.int64), 0)
    stop = np.minimum(((centers + support).astype(f64) + 0.5).astype(np.int64), in_size)
    indices = first[:, None] + np.arange((stop - first).max())
    offsets = ((indices.astype(f32) - centers[:, None]).astype(f64) + 0.5) * f64(inv_scale)
    weights = (1 - np.abs(offsets.astype(f32))).clip(0).astype(f32)
    weights[indices >= stop[:, None]] = 0
    # Normalised by their sum, accumulated in order in float32.
    total = np.zeros(out_size, f32)
    for k in range(weights.shape[1]):
        total += weights[:, k]
    weights /= total[:, None]
    return np.minimum(indices, in_size - 1), weights


def resize_bilinear_antialiased(image, size):
    """Resize an (H, W, C) float32 image to ``size`` = (height, width) as
    ``torch.nn.functional.interpolate(mode="bilinear", align_corners=False, antialias=True)``
    does: width first, then height, each output pixel a weighted sum over a few source pixels
    added in PyTorch's order."""

    def along_first_axis(array, taps):
        indices, weights = taps
        # Gathers along the first axis copy whole contiguous rows: fast.
        result = array[indices[:, 0]] * weights[:, 0, None, None]
        for k in range(1, indices.shape[1]):
            result += array[indices[:, k]] * weights[:, k, None, None]
        return result

    height, width = size
    columns = _antialiased_bilinear_taps(image.shape[1], width)
    resized = along_first_axis(np.ascontiguousarray(image.transpose(1, 0, 2)), columns)
    rows = _antialiased_bilinear_taps(image.shape[0], height)
    return along_first_axis(np.ascontiguousarray(resized.transpose(1, 0, 2)), rows)


# ----------------------------------------------------------------------------- keypoint decoding
def _bicubic_taps(in_size, out_size):
    """Source indices (out_size, 4) and weights of PyTorch's bicubic interpolation
    (``align_corners=False``, Keys' kernel with a = -0.75) along one axis, in float32."""
    scale = np.float32(in_size) / np.float32(out_size)
    source = scale * (np.arange(out_size, dtype=np.float32) + np.float32(0.5)) - np.float32(0.5)
    start = np.floor(source)
    t = source - start
    a = np.float32(_CUBIC_A)

    def near(x):  # |x| <= 1
        return ((a + 2) * x - (a + 3)) * x * x + 1

    def far(x):  # 1 < |x| < 2
        return ((a * x - 5 * a) * x + 8 * a) * x - 4 * a

    weights = np.stack([far(t + 1), near(t), near(1 - t), far(2 - t)], axis=1)
    # Pixels beyond the border repeat the border pixel.
    indices = np.clip(start.astype(np.int64)[:, None] + np.arange(-1, 3), 0, in_size - 1)
    return indices, weights.astype(np.float32)


def _resize_bicubic(maps, height, width):
    """(S, S, K) float32 maps resized to (height, width, K) as PyTorch's
    ``F.interpolate(mode="bicubic", align_corners=False)``: along x, then along y, adding the
    four taps in PyTorch's order. Channels last, so that every gather copies whole rows."""
    columns, column_weights = _bicubic_taps(maps.shape[1], width)
    rows, row_weights = _bicubic_taps(maps.shape[0], height)
    by_x = np.ascontiguousarray(maps.transpose(1, 0, 2))  # (x, y, K)
    along_x = by_x[columns[:, 0]] * column_weights[:, 0, None, None]
    for k in range(1, 4):
        along_x += by_x[columns[:, k]] * column_weights[:, k, None, None]
    by_y = np.ascontiguousarray(along_x.transpose(1, 0, 2))  # (y, width, K)
    result = by_y[rows[:, 0]] * row_weights[:, 0, None, None]
    for k in range(1, 4):
        result += by_y[rows[:, k]] * row_weights[:, k, None, None]
    return result


def heatmaps_to_keypoints(maps, boxes):
    """Keypoints from heatmap logits: detectron2's ``heatmaps_to_keypoints`` in numpy.

    Args:
        maps: (R, K, S, S) float32 heatmap logits of R boxes.
        boxes: (R, 4) float32 boxes (XYXY) the heatmaps were predicted in.

    Returns:
        (R, K, 3) float32: x, y (continuous coordinates: pixel index + 0.5, Heckbert 1990) and
        score, detectron2's ``pred_keypoints``. Each box's maps are upsampled to the box size
        (rounded up), the first arg-max pixel is the keypoint, and the score is its softmax
        probability over the map at heatmap resolution (so that scores of people of
        different sizes are comparable).
    """
    maps = np.asarray(maps, dtype=np.float32)
    boxes = np.asarray(boxes, dtype=np.float32)
    num_boxes, num_keypoints = maps.shape[:2]
    widths = np.maximum(boxes[:, 2] - boxes[:, 0], np.float32(1))
    heights = np.maximum(boxes[:, 3] - boxes[:, 1], np.float32(1))
    widths_ceil = np.ceil(widths)
    heights_ceil = np.ceil(heights)
    width_corrections = widths / widths_ceil
    height_corrections = heights / heights_ceil

    keypoints = np.zeros((num_boxes, num_keypoints, 3), dtype=np.float32)
    for i in range(num_boxes):
        height, width = int(heights_ceil[i]), int(widths_ceil[i])
        roi_map = _resize_bicubic(maps[i].transpose(1, 2, 0), height, width)
        flat = roi_map.reshape(height * width, num_keypoints)
        position = flat.argmax(axis=0)  # row-major (y, x), as PyTorch's argmax
        max_logit = flat[position, np.arange(num_keypoints)]
        y_int, x_int = np.divmod(position, width)
        # detectron2 divides exp(roi_map - max) by the sum of exp(maps - max) over the
        # heatmap; at the arg-max the numerator is exp(0) = 1.
        normaliser = np.exp(maps[i] - max_logit[:, None, None]).sum(axis=(1, 2))
        x = (x_int.astype(np.float32) + np.float32(0.5)) * width_corrections[i]
        y = (y_int.astype(np.float32) + np.float32(0.5)) * height_corrections[i]
        keypoints[i, :, 0] = x + boxes[i, 0]
        keypoints[i, :, 1] = y + boxes[i, 1]
        keypoints[i, :, 2] = 1 / normaliser
    return keypoints


# ----------------------------------------------------------------------------- the runner
def _parse_metadata(path, metadata):
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


def _check_signature(path, inputs, outputs, input_size, num_keypoints):
    """``inputs``: [(name, shape, element type)]; ``outputs``: {name: shape}; shapes as lists
    with None or a name for a dynamic dimension."""
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


def available_runtimes():
    """The installed runtimes, fastest first (see ``RUNTIMES``)."""
    return [name for name in RUNTIMES if importlib.util.find_spec(name) is not None]


def cpu_supports_bf16():
    """Whether OpenVINO computes in bfloat16 natively on this CPU (AVX-512 BF16 or AMX)."""
    import openvino

    return "BF16" in openvino.Core().get_property("CPU", "OPTIMIZATION_CAPABILITIES")


class _OnnxruntimeGraph:
    """The graph on onnxruntime's CPU provider."""

    def __init__(self, path, num_threads, precision):
        import onnxruntime

        if precision != "fp32":
            raise ValueError(
                f"precision={precision!r} runs on OpenVINO only (onnxruntime's CPU provider has "
                "no bfloat16 kernels): use runtime='openvino'"
            )
        options = onnxruntime.SessionOptions()
        if num_threads is not None:
            options.intra_op_num_threads = num_threads
        try:
            self.session = onnxruntime.InferenceSession(
                path, options, providers=["CPUExecutionProvider"]
            )
        # onnxruntime raises its own exception types, subclasses of Exception only.
        except Exception as e:
            raise ExportedModelError(
                f"{path}: onnxruntime cannot load this file as an ONNX model (corrupt or "
                f"truncated?): {e}"
            ) from e
        self.metadata = self.session.get_modelmeta().custom_metadata_map
        types = {"tensor(float)": "float32"}
        self.inputs = [
            (i.name, i.shape, types.get(i.type, i.type)) for i in self.session.get_inputs()
        ]
        self.outputs = {o.name: o.shape for o in self.session.get_outputs()}
        self.precision = precision

    def __call__(self, graph_input):
        outputs = self.session.run(OUTPUT_NAMES, {INPUT_NAME: graph_input})
        return dict(zip(OUTPUT_NAMES, outputs))


class _OpenVINOGraph:
    """The graph compiled by OpenVINO for the CPU, its float operations at ``precision``."""

    def __init__(self, path, num_threads, precision):
        import openvino

        core = openvino.Core()
        try:
            model = core.read_model(path)
        except RuntimeError as e:
            raise ExportedModelError(
                f"{path}: OpenVINO cannot load this file as an ONNX model (corrupt or "
                f"truncated?): {e}"
            ) from e
        # OpenVINO keeps an ONNX file's metadata in its runtime info, under "framework".
        self.metadata = {
            key: model.get_rt_info(["framework", key]).astype(str)
            for key in [METADATA_KEY]
            if model.has_rt_info(["framework", key])
        }
        if precision == "bf16" and not cpu_supports_bf16():
            warnings.warn(
                "bf16 requested, but this CPU computes no bfloat16 natively (it needs AVX-512 "
                "BF16 or AMX): running in float32",
                RuntimeWarning,
                stacklevel=3,
            )
            precision = "fp32"
        # Explicit, as OpenVINO's default on a CPU with bfloat16 is bfloat16.
        config = {"INFERENCE_PRECISION_HINT": {"fp32": "f32", "bf16": "bf16"}[precision]}
        if num_threads is not None:
            config["INFERENCE_NUM_THREADS"] = num_threads
        compiled = core.compile_model(model, "CPU", config)
        self.request = compiled.create_infer_request()
        self.precision = precision

        def shape(port):
            return [d.get_length() if d.is_static else None for d in port.get_partial_shape()]

        def name(port):  # a port has several names in a compiled model: the graph's among them
            names = port.get_names()
            return next((n for n in (INPUT_NAME, *OUTPUT_NAMES) if n in names), port.get_any_name())

        self.inputs = [
            (name(port), shape(port), port.get_element_type().to_dtype().name)
            for port in model.inputs
        ]
        self.outputs = {name(port): shape(port) for port in model.outputs}
        self._output_ports = {name(port): port for port in compiled.outputs}

    def __call__(self, graph_input):
        results = self.request.infer({INPUT_NAME: graph_input})
        return {name: results[self._output_ports[name]] for name in OUTPUT_NAMES}


_GRAPHS = {"openvino": _OpenVINOGraph, "onnxruntime": _OnnxruntimeGraph}


class OnnxPoseRunner:
    """An exported pose model on onnxruntime or OpenVINO (CPU), with the model's pre- and
    post-processing; call it on a BGR image (H, W, 3) uint8."""

    def __init__(self, onnx_path, num_threads=None, runtime=None, precision="fp32"):
        """
        Args:
            onnx_path: a file written by ``python -m d2_edwpose.tools.export_model`` (float32,
                or INT8 with ``--quantize int8``).
            num_threads: the runtime's intra-op threads; None for its default (one per
                physical core).
            runtime: "openvino" or "onnxruntime"; None: the first installed of ``RUNTIMES``.
            precision: of the float operations: "fp32", or "bf16" (OpenVINO only; on a CPU
                without native bfloat16, float32 with a warning).
        """
        path = os.fspath(onnx_path)
        if not os.path.isfile(path):
            raise FileNotFoundError(f"{path}: no such ONNX file")
        installed = available_runtimes()
        runtime = runtime or (installed[0] if installed else RUNTIMES[-1])
        if runtime not in RUNTIMES:
            raise ValueError(f"runtime={runtime!r}: expected one of {RUNTIMES}")
        if precision not in PRECISIONS:
            raise ValueError(f"precision={precision!r}: expected one of {PRECISIONS}")
        if runtime not in installed:
            raise ModuleNotFoundError(
                f"runtime={runtime!r} is not installed: pip install {runtime}"
            )
        # Imported by the graph classes rather than at the top: the exporter imports this
        # module's constants, and exporting (e.g. to TorchScript) needs no runtime.
        self.graph = _GRAPHS[runtime](path, num_threads, precision)
        info = _parse_metadata(path, self.graph.metadata)
        self.path = path
        self.runtime = runtime
        self.input_format = info["input_format"]
        self.input_size = tuple(info["input_size"])
        self.score_threshold = float(info["score_threshold"])
        self.num_keypoints = int(info["num_keypoints"])
        # Files exported without the dataset's names have no "keypoint_names".
        self.keypoint_names = info.get("keypoint_names")
        if self.keypoint_names is not None and len(self.keypoint_names) != self.num_keypoints:
            raise ExportedModelError(
                f"{path}: metadata names {len(self.keypoint_names)} keypoints, num_keypoints is "
                f"{self.num_keypoints}"
            )
        # "int8" for a quantized file (its float operations at the float precision), else the
        # precision the float operations run at.
        self.precision = "int8" if info.get("precision") == "int8" else self.graph.precision
        _check_signature(
            path, self.graph.inputs, self.graph.outputs, self.input_size, self.num_keypoints
        )

    def preprocess(self, image):
        """The graph's input for a BGR (H, W, 3) image: (3, *input_size) float32, in the
        model's channel order, resized as ``FixedInputSizeRCNN`` resizes."""
        if image.ndim != 3 or image.shape[2] != 3:
            raise ValueError(f"expected a BGR image of shape (H, W, 3), got shape {image.shape}")
        if self.input_format == "RGB":
            image = image[:, :, ::-1]
        image = image.astype(np.float32)
        if image.shape[:2] != self.input_size:
            image = resize_bilinear_antialiased(image, self.input_size)
        return np.ascontiguousarray(image.transpose(2, 0, 1))

    def run_graph(self, graph_input):
        """The graph's outputs (a dict by name) for a pre-processed image."""
        return self.graph(graph_input)

    def postprocess(self, outputs, image_size, score_threshold=None):
        """Boxes, scores, classes and keypoints in the coordinates of an image of
        ``image_size`` = (height, width), from the graph's outputs."""
        threshold = self.score_threshold if score_threshold is None else score_threshold
        if threshold < self.score_threshold:
            raise ValueError(
                f"score_threshold={threshold} is below {self.score_threshold}, the threshold "
                f"exported into {self.path}: detections under it were already dropped. Export "
                "again with a lower MODEL.ROI_HEADS.SCORE_THRESH_TEST."
            )
        # Strictly above, as detectron2 applies MODEL.ROI_HEADS.SCORE_THRESH_TEST.
        keep = outputs["scores"] > threshold
        boxes = outputs["boxes"][keep]
        keypoints = heatmaps_to_keypoints(outputs["keypoint_heatmaps"][keep], boxes)

        height, width = image_size
        scale_x = width / self.input_size[1]
        scale_y = height / self.input_size[0]
        boxes = boxes * np.array([scale_x, scale_y, scale_x, scale_y], dtype=np.float32)
        boxes[:, 0::2] = boxes[:, 0::2].clip(0, width)
        boxes[:, 1::2] = boxes[:, 1::2].clip(0, height)
        keypoints[:, :, 0] *= scale_x
        keypoints[:, :, 1] *= scale_y
        nonempty = (boxes[:, 2] > boxes[:, 0]) & (boxes[:, 3] > boxes[:, 1])
        return {
            "boxes": boxes[nonempty],
            "scores": outputs["scores"][keep][nonempty],
            "classes": outputs["classes"][keep][nonempty],
            "keypoints": keypoints[nonempty],
        }

    def __call__(self, image, score_threshold=None):
        """Poses in a BGR (H, W, 3) image: people scored above ``score_threshold`` (default
        and minimum: the exported one)."""
        outputs = self.run_graph(self.preprocess(image))
        return self.postprocess(outputs, image.shape[:2], score_threshold)


def main(argv=None):
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("model", help="ONNX file written by d2_edwpose.tools.export_model")
    parser.add_argument("images", nargs="+", help="image files")
    parser.add_argument("--score-threshold", type=float, help="default: the exported one")
    parser.add_argument("--threads", type=int, help="the runtime's intra-op threads")
    parser.add_argument(
        "--runtime", choices=RUNTIMES, help=f"default: the first installed of {list(RUNTIMES)}"
    )
    parser.add_argument(
        "--precision",
        choices=PRECISIONS,
        default="fp32",
        help="of the float operations; bf16: OpenVINO, on CPUs with AVX-512 BF16 or AMX",
    )
    parser.add_argument("--output", help="JSON file to write (default: standard output)")
    args = parser.parse_args(argv)

    runner = OnnxPoseRunner(
        args.model, num_threads=args.threads, runtime=args.runtime, precision=args.precision
    )
    results = []
    for path in args.images:
        image = cv2.imread(path)
        if image is None:
            raise SystemExit(f"{path}: not a readable image file")
        poses = runner(image, args.score_threshold)
        people = [
            {"box": box.tolist(), "score": float(score), "keypoints": keypoints.tolist()}
            for box, score, keypoints in zip(poses["boxes"], poses["scores"], poses["keypoints"])
        ]
        results.append(
            {"image": path, "height": image.shape[0], "width": image.shape[1],
             "keypoint_names": runner.keypoint_names, "people": people}
        )  # fmt: skip
    text = json.dumps(results)
    if args.output:
        with open(args.output, "w") as f:
            f.write(text + "\n")
    else:
        sys.stdout.write(text + "\n")
    return results


if __name__ == "__main__":
    main()
