"""The exported pose model with the PyTorch model's pre- and post-processing, in numpy.

The exported graph (``python -m d2_edwpose.tools.export_model``) takes one image of the model's
fixed input size (``INPUT.FIXED_SIZE``) and returns boxes, scores and classes after score
threshold and NMS, and each box's keypoint heatmap logits, in that image's coordinates; it
normalises the pixels itself. The runner does the rest, in float32:

* pre-processing (``FixedInputSizeRCNN``): channel order of ``INPUT.FORMAT``, then PyTorch's
  antialiased bilinear resize to the fixed size;
* keypoint decoding (detectron2's ``heatmaps_to_keypoints``): here, because its per-box loop
  over box-sized maps cannot be exported by PyTorch's ONNX exporter, and costs little in numpy;
* post-processing (detectron2's ``detector_postprocess``): boxes and keypoints scaled back to
  the image given, boxes clipped to it, empty boxes dropped.
"""
import os

import cv2
import numpy as np

# Besides what the runner uses, the names its users need (export, quantization, the tools), so
# that they import them from one module.
from .export_contract import (
    INPUT_NAME,
    METADATA_FORMAT,
    METADATA_KEY,
    OUTPUT_NAMES,
    ExportedModelError,
    check_signature,
    parse_metadata,
)
from .drawing import skeleton_edges
from .interpolation import resize_bicubic, resize_bilinear_antialiased
from .runtimes import PRECISIONS, RUNTIMES, available_runtimes, cpu_supports_bf16, load_graph
from .streaming import stream_poses

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
    max_logits = np.zeros((num_boxes, num_keypoints), dtype=np.float32)
    every_keypoint = np.arange(num_keypoints)
    for i in range(num_boxes):
        height, width = int(heights_ceil[i]), int(widths_ceil[i])
        flat = resize_bicubic(maps[i], height, width).reshape(num_keypoints, height * width)
        position = flat.argmax(axis=1)  # row-major (y, x), as PyTorch's argmax
        max_logits[i] = flat[every_keypoint, position]
        y_int, x_int = np.divmod(position, width)
        x = (x_int.astype(np.float32) + np.float32(0.5)) * width_corrections[i]
        y = (y_int.astype(np.float32) + np.float32(0.5)) * height_corrections[i]
        keypoints[i, :, 0] = x + boxes[i, 0]
        keypoints[i, :, 1] = y + boxes[i, 1]
    # detectron2 divides exp(roi_map - max) by the sum of exp(maps - max) over the heatmap; at
    # the arg-max the numerator is exp(0) = 1.
    normalisers = np.exp(maps - max_logits[:, :, None, None]).sum(axis=(2, 3))
    keypoints[:, :, 2] = 1 / normalisers
    return keypoints


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
        self.graph = load_graph(path, num_threads, runtime, precision)
        info = parse_metadata(path, self.graph.metadata)
        self.path = path
        self.runtime = self.graph.runtime
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
        # What the drawing follows; files exported without them draw the keypoints alone.
        self.keypoint_flip_map = info.get("keypoint_flip_map")
        self.keypoint_connection_rules = info.get("keypoint_connection_rules")
        if self.keypoint_connection_rules and self.keypoint_names is None:
            raise ExportedModelError(
                f"{path}: metadata has keypoint_connection_rules but no keypoint_names"
            )
        # "int8" for a quantized file (its float operations at the float precision), else the
        # precision the float operations run at.
        self.precision = "int8" if info.get("precision") == "int8" else self.graph.precision
        check_signature(
            path, self.graph.inputs, self.graph.outputs, self.input_size, self.num_keypoints
        )

    def preprocess(self, image):
        """The graph's input for a BGR (H, W, 3) image: (3, *input_size) float32, in the
        model's channel order, resized as ``FixedInputSizeRCNN`` resizes."""
        if image.ndim != 3 or image.shape[2] != 3:
            raise ValueError(f"expected a BGR image of shape (H, W, 3), got shape {image.shape}")
        # The planes in the model's order, each contiguous: OpenCV splits the channels
        # vectorised, and the resize reads whole rows of each plane.
        planes = cv2.split(image)
        if self.input_format == "RGB":
            planes = planes[::-1]
        planes = np.stack(planes)
        if planes.shape[1:] != self.input_size:
            return resize_bilinear_antialiased(planes, self.input_size)
        return planes.astype(np.float32)

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

    def stream(
        self,
        source,
        score_threshold=None,
        tracker="bytetrack",
        live=None,
        smoothing=None,
        tracker_options=None,
    ):
        """The poses of every frame of ``source`` (an image file, a folder, a video file, a
        camera index, a stream URL), as a generator of :class:`~.streaming.PoseFrame`
        (``index``, ``timestamp``, ``poses`` with ``track_ids``, ``latency``, ...), with
        reading, the graph and post-processing overlapped; see
        :func:`~.streaming.stream_poses` for the arguments::

            for frame in runner.stream("clip.mp4"):
                frame.index, frame.timestamp, frame.poses["track_ids"], frame.poses["keypoints"]
        """
        return stream_poses(
            self, source, score_threshold, tracker, live, smoothing, tracker_options
        )

    def skeleton(self):
        """The skeleton to draw: (index_a, index_b, BGR colour) per connection rule."""
        return skeleton_edges(self.keypoint_names, self.keypoint_connection_rules)
