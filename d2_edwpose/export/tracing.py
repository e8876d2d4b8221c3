"""Export a Keypoint R-CNN of this project to ONNX and TorchScript with detectron2's
:class:`~detectron2.export.TracingAdapter`, and check the export against PyTorch.

Both exports take one image of the model's fixed input size, (3, *INPUT.FIXED_SIZE) float32
in the channel order of ``INPUT.FORMAT`` with values in [0, 255] (what
:class:`~d2_edwpose.modeling.meta_arch.FixedInputSizeRCNN` feeds its network after its
resize), normalise it inside, and return detections in the coordinates of that image,
after the score threshold, NMS and ``TEST.DETECTIONS_PER_IMAGE`` of the config:

* ONNX: ``boxes`` (N, 4), ``scores`` (N,), ``classes`` (N,), ``keypoint_heatmaps``
  (N, K, 56, 56) logits. PyTorch's ONNX exporter cannot export detectron2's keypoint
  decoding (``heatmaps_to_keypoints``: a loop over boxes that upsamples each box's maps to the
  box's size and indexes the arg-max), so the graph stops at the heatmap logits and
  :mod:`d2_edwpose.deploy.onnx_pose_runner` decodes them in numpy with the same math, and
  does the resize and the scaling back to the image;
* TorchScript: ``boxes``, ``scores``, ``classes``, ``keypoints`` (N, K, 3): tracing keeps
  detectron2's decoding, which is a scripted function inside the traced module.

The number of detections N is not fixed by the trace (checked by the tests on images with
different numbers of people). What a runner needs to know travels with the file: ONNX
metadata ``d2_edwpose`` and the TorchScript extra file ``d2_edwpose.json``, a JSON object
with the format, ``input_format``, ``input_size``, ``score_threshold``, ``num_keypoints`` and,
when known, ``keypoint_names``, ``keypoint_flip_map`` and ``keypoint_connection_rules``
(detectron2's metadata, by name: what the runner draws with).
"""
import contextlib
import copy
import io
import json
import os
import warnings
from pathlib import Path

import numpy as np
import torch
import torchvision
from torch import nn

from detectron2.export import TracingAdapter

from ..deploy import onnx_pose_runner
from ..modeling.cpu_inference.edwconv_split import split_edwconvs
from ..modeling.meta_arch import FixedInputSizeRCNN, resize_to_fixed_size
from ..modeling.roi_heads.keypoint_decoding import heatmaps_to_keypoints
from ..utils.atomic_files import atomic_open

__all__ = [
    "ONNX_OPSET",
    "TORCHSCRIPT_FORMAT",
    "TORCHSCRIPT_METADATA_FILE",
    "TORCHSCRIPT_OUTPUT_NAMES",
    "export_onnx",
    "export_torchscript",
    "load_torchscript",
    "compare_with_pytorch",
    "pytorch_poses",
    "compare_torchscript_with_pytorch",
]

# RoiAlign's half-pixel mode, which detectron2's aligned RoIAlign exports to, needs opset 16;
# 17 is the opset the exports are tested with.
ONNX_OPSET = 17
TORCHSCRIPT_FORMAT = "d2_edwpose.keypoint_rcnn.torchscript/1"
TORCHSCRIPT_METADATA_FILE = "d2_edwpose.json"
TORCHSCRIPT_OUTPUT_NAMES = ("boxes", "scores", "classes", "keypoints")


def _check_exportable(model):
    if not isinstance(model, FixedInputSizeRCNN):
        raise ValueError(
            f"only FixedInputSizeRCNN models (MODEL.META_ARCHITECTURE: FixedInputSizeRCNN) can "
            f"be exported: the runner reproduces their fixed-size resize; got {type(model).__name__}"
        )
    if not model.roi_heads.keypoint_on:
        raise ValueError("the model has no keypoint head (MODEL.KEYPOINT_ON is False)")
    if model.input_format not in ("RGB", "BGR"):
        raise ValueError(f"INPUT.FORMAT={model.input_format!r}: only RGB and BGR can be exported")


def _metadata(model, format_name, keypoint_metadata):
    num_keypoints = model.roi_heads.keypoint_head.num_keypoints
    metadata = {
        "format": format_name,
        "input_format": model.input_format,
        "input_size": list(model.input_size),
        "score_threshold": model.roi_heads.box_predictor.test_score_thresh,
        "num_keypoints": num_keypoints,
    }
    if keypoint_metadata is None:
        return metadata
    names = list(keypoint_metadata.keypoint_names)
    if len(names) != num_keypoints:
        raise ValueError(
            f"keypoint_names has {len(names)} names, the model {num_keypoints} keypoints"
        )
    metadata["keypoint_names"] = names
    # What the runner draws with: detectron2's metadata, by keypoint name.
    for field in ("keypoint_flip_map", "keypoint_connection_rules"):
        entries = keypoint_metadata.get(field)
        if entries is not None:
            metadata[field] = [list(entry) for entry in entries]
    for first, second, *_ in metadata.get("keypoint_connection_rules", ()):
        if first not in names or second not in names:
            raise ValueError(
                f"keypoint_connection_rules connects {first!r} and {second!r}; the keypoint "
                f"names are {names}"
            )
    return metadata


class _SingleImageKeypointHead(nn.Module):
    """A keypoint head's inference for one image: its layers, then, if ``decode``, the keypoint
    decoding of the project's head (detectron2's results); the heatmap logits are kept as
    ``pred_keypoint_heatmaps``.

    Unlike the heads' own inference, it splits nothing by the number of detections per image,
    a Python int that a trace would freeze to the count of the tracing image.
    """

    def __init__(self, head, decode):
        super().__init__()
        self.head = head
        self.decode = decode

    def forward(self, x, instances):
        (image_instances,) = instances
        heatmaps = self.head.layers(x)
        image_instances.pred_keypoint_heatmaps = heatmaps
        if self.decode:
            # (x, y, logit, score) -> detectron2's pred_keypoints (x, y, score).
            keypoints = heatmaps_to_keypoints(heatmaps, image_instances.pred_boxes.tensor)
            image_instances.pred_keypoints = keypoints[:, :, [0, 1, 3]]
        return instances


def _batched_nms_without_branches(boxes, scores, idxs, iou_threshold):
    """torchvision's ``batched_nms`` as it runs when traced (NMS on boxes offset by class),
    without its early return for no boxes. The exporter turns that return into an ONNX ``If``
    whose empty branch OpenVINO has run as one index: on an image without people it reported
    one with a made-up box (docs/deploy.md). Here the offset comes from the boxes and a zero, so that
    no boxes take the same path and NMS returns no index."""
    max_coordinate = torch.cat([boxes.reshape(-1), boxes.new_zeros(1)]).max()
    offsets = idxs.to(boxes) * (max_coordinate + 1)
    return torchvision.ops.nms(boxes + offsets[:, None], scores, iou_threshold)


@contextlib.contextmanager
def _exporting(model, decode_keypoints):
    """A copy of ``model`` in the form that is traced: in eval mode, with a
    :class:`_SingleImageKeypointHead`, its EDWConvs as plain depthwise-separable convs
    (:func:`split_edwconvs`) and detectron2's NMS calls branch-free
    (:func:`_batched_nms_without_branches`); ``model`` itself is left as it is.

    An EDWConv's depthwise conv (groups = in_channels, e > 1 filters each) misses oneDNN's
    depthwise kernel, in OpenVINO too, and runs slower than its e plain depthwise convs
    (docs/export.md).
    """
    exported = copy.deepcopy(model).eval()
    split_edwconvs(exported)
    exported.roi_heads.keypoint_head = _SingleImageKeypointHead(
        exported.roi_heads.keypoint_head, decode_keypoints
    )
    # detectron2.layers.batched_nms calls torchvision.ops.boxes.batched_nms.
    batched_nms = torchvision.ops.boxes.batched_nms
    torchvision.ops.boxes.batched_nms = _batched_nms_without_branches
    try:
        with warnings.catch_warnings():
            # The tracer warns about every Python bool/int it records as a constant; in
            # detectron2's inference these are asserts and shape checks of a fixed-size
            # input. The tests check the traced graphs on images with other detections.
            warnings.simplefilter("ignore", torch.jit.TracerWarning)
            yield exported
    finally:
        torchvision.ops.boxes.batched_nms = batched_nms


def _tracing_adapter(model, keypoints_field):
    def inference(model, batched_inputs):
        (instances,) = model.inference(batched_inputs, do_postprocess=False)
        return (
            instances.pred_boxes.tensor,
            instances.scores,
            instances.pred_classes,
            instances.get(keypoints_field),
        )

    # detectron2's inference does not depend on the image's content in any traced branch,
    # so a blank image of the fixed size traces the same graph as a photo.
    image = torch.zeros(3, *model.input_size, device=model.device)
    return TracingAdapter(model, [{"image": image}], inference).eval()


def export_onnx(model, output_path, keypoint_metadata=None):
    """Export ``model`` (a :class:`FixedInputSizeRCNN` with keypoints) to an ONNX file for
    :class:`~d2_edwpose.deploy.onnx_pose_runner.OnnxPoseRunner`; returns its path.
    ``keypoint_metadata`` (the dataset's detectron2 ``Metadata``, or any object with ``.get``
    and ``keypoint_names``): its ``keypoint_names``, ``keypoint_flip_map`` and
    ``keypoint_connection_rules`` are stored for the runner to report and draw with."""
    import onnx  # only needed to export

    _check_exportable(model)
    with _exporting(model, decode_keypoints=False) as exported:
        adapter = _tracing_adapter(exported, "pred_keypoint_heatmaps")
        buffer = io.BytesIO()
        detections = {0: "detections"}
        torch.onnx.export(
            adapter,
            adapter.flattened_inputs,
            buffer,
            # The TorchScript-based exporter: the one that exports a torch.jit trace, which
            # is what TracingAdapter makes of detectron2's models.
            dynamo=False,
            opset_version=ONNX_OPSET,
            input_names=[onnx_pose_runner.INPUT_NAME],
            output_names=list(onnx_pose_runner.OUTPUT_NAMES),
            dynamic_axes={name: detections for name in onnx_pose_runner.OUTPUT_NAMES},
        )
    proto = onnx.load_model_from_string(buffer.getvalue())
    metadata = _metadata(model, onnx_pose_runner.METADATA_FORMAT, keypoint_metadata)
    onnx.helper.set_model_props(proto, {onnx_pose_runner.METADATA_KEY: json.dumps(metadata)})
    onnx.checker.check_model(proto)
    output_path = Path(output_path)
    with atomic_open(output_path, "wb") as f:
        f.write(proto.SerializeToString())
    return output_path


def export_torchscript(model, output_path, keypoint_metadata=None):
    """Trace ``model`` (a :class:`FixedInputSizeRCNN` with keypoints) to a TorchScript file
    (outputs :data:`TORCHSCRIPT_OUTPUT_NAMES`); returns its path. ``keypoint_metadata`` as
    for :func:`export_onnx`."""
    _check_exportable(model)
    with _exporting(model, decode_keypoints=True) as exported:
        adapter = _tracing_adapter(exported, "pred_keypoints")
        # check_trace would re-run the model and compare, which the tests do on real images.
        traced = torch.jit.trace(adapter, adapter.flattened_inputs, check_trace=False)
    extra_files = {TORCHSCRIPT_METADATA_FILE: json.dumps(_metadata(model, TORCHSCRIPT_FORMAT, keypoint_metadata))}
    output_path = Path(output_path)
    with atomic_open(output_path, "wb") as f:
        torch.jit.save(traced, f, _extra_files=extra_files)
    return output_path


def load_torchscript(path):
    """(module, metadata) of a file written by :func:`export_torchscript`."""
    if not os.path.isfile(path):
        raise FileNotFoundError(f"{path}: no such TorchScript file")
    extra_files = {TORCHSCRIPT_METADATA_FILE: ""}
    try:
        module = torch.jit.load(str(path), map_location="cpu", _extra_files=extra_files)
    except RuntimeError as e:
        raise ValueError(f"{path}: not a readable TorchScript file (corrupt or truncated?): {e}") from e
    if not extra_files[TORCHSCRIPT_METADATA_FILE]:
        raise ValueError(
            f"{path}: a TorchScript file without '{TORCHSCRIPT_METADATA_FILE}': not exported "
            "by d2_edwpose.tools.export_model"
        )
    metadata = json.loads(extra_files[TORCHSCRIPT_METADATA_FILE])
    if metadata.get("format") != TORCHSCRIPT_FORMAT:
        raise ValueError(
            f"{path}: exported as format {metadata.get('format')!r}, expected {TORCHSCRIPT_FORMAT!r}"
        )
    return module, metadata


def _model_input(image, input_format):
    """A (3, H, W) uint8 tensor in ``input_format`` from a (H, W, 3) BGR numpy image."""
    if input_format == "RGB":
        image = image[:, :, ::-1]
    return torch.as_tensor(np.ascontiguousarray(image.transpose(2, 0, 1)))


def _largest_difference(a, b):
    return float(np.abs(np.asarray(a, dtype=np.float64) - np.asarray(b, dtype=np.float64)).max(initial=0.0))


@torch.no_grad()
def pytorch_poses(model, image):
    """``model``'s poses in a BGR (H, W, 3) image, as numpy arrays in the runner's format:
    ``boxes``, ``scores``, ``classes``, ``keypoints``."""
    (output,) = model([{"image": _model_input(image, model.input_format).to(model.device)}])
    instances = output["instances"].to("cpu")
    return {
        "boxes": instances.pred_boxes.tensor.numpy(),
        "scores": instances.scores.numpy(),
        "classes": instances.pred_classes.numpy(),
        "keypoints": instances.pred_keypoints.numpy(),
    }


@torch.no_grad()
def compare_with_pytorch(model, runner, images, score_threshold=None):
    """Run ``model`` (PyTorch, with its own pre- and post-processing) and ``runner`` (an
    :class:`OnnxPoseRunner` of its export) on BGR images; return the largest differences.

    Returns a dict: ``images``; ``detections`` (PyTorch's, over all images);
    ``count_mismatches``, the images where the two find different numbers of people; and,
    over the other images, detection by detection (both sort by score), the largest absolute
    differences ``box_px``, ``keypoint_px`` (x and y), ``score`` and ``keypoint_score``.
    """
    threshold = runner.score_threshold if score_threshold is None else score_threshold
    stats = dict(images=0, detections=0, count_mismatches=0)
    stats.update(dict.fromkeys(("box_px", "keypoint_px", "score", "keypoint_score"), 0.0))
    for image in images:
        expected = pytorch_poses(model, image)
        kept = expected["scores"] > threshold
        expected = {key: value[kept] for key, value in expected.items()}
        poses = runner(image, threshold)
        stats["images"] += 1
        stats["detections"] += int(kept.sum())
        if int(kept.sum()) != len(poses["scores"]):
            stats["count_mismatches"] += 1
            continue
        keypoints = expected["keypoints"]
        differences = {
            "box_px": (expected["boxes"], poses["boxes"]),
            "keypoint_px": (keypoints[..., :2], poses["keypoints"][..., :2]),
            "score": (expected["scores"], poses["scores"]),
            "keypoint_score": (keypoints[..., 2], poses["keypoints"][..., 2]),
        }
        for key, (expected, found) in differences.items():
            stats[key] = max(stats[key], _largest_difference(expected, found))
    return stats


@torch.no_grad()
def compare_torchscript_with_pytorch(model, module, images):
    """Run ``model`` and ``module`` (its :func:`export_torchscript`) on BGR images resized to
    the fixed size as ``model`` resizes them; return the largest absolute differences.

    Returns a dict: ``images``, ``detections``, ``count_mismatches`` and, per output of
    :data:`TORCHSCRIPT_OUTPUT_NAMES`, the largest absolute difference over the other images.
    """
    stats = dict(images=0, detections=0, count_mismatches=0, **dict.fromkeys(TORCHSCRIPT_OUTPUT_NAMES, 0.0))
    for image in images:
        tensor = _model_input(image, model.input_format).to(model.device)
        fixed_size = resize_to_fixed_size(tensor, model.input_size)
        (instances,) = model.inference([{"image": fixed_size}], do_postprocess=False)
        expected = (
            instances.pred_boxes.tensor,
            instances.scores,
            instances.pred_classes,
            instances.pred_keypoints,
        )
        found = module(fixed_size)
        stats["images"] += 1
        stats["detections"] += len(instances)
        if len(found[0]) != len(instances):
            stats["count_mismatches"] += 1
            continue
        for name, a, b in zip(TORCHSCRIPT_OUTPUT_NAMES, expected, found):
            stats[name] = max(stats[name], _largest_difference(a.cpu(), b.cpu()))
    return stats
