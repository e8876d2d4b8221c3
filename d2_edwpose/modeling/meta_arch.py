"""Keypoint R-CNN on a fixed input size (the paper resizes every image to 320x320)."""
from typing import Dict, List, Tuple

import torch
import torch.nn.functional as F

from detectron2.config import configurable
from detectron2.modeling import META_ARCH_REGISTRY, GeneralizedRCNN
from detectron2.modeling.roi_heads.keypoint_head import ROI_KEYPOINT_HEAD_REGISTRY
from detectron2.structures import Boxes, Instances, Keypoints

from ..utils.validation import check_config_value, is_int
from .roi_heads.keypoint_head import KRCNNConfigurableConvDeconvUpsampleHead

__all__ = ["FixedInputSizeRCNN", "resize_sample", "resize_to_fixed_size"]

# Instance fields that are not geometric and so survive a resize unchanged.
_SIZE_INDEPENDENT_FIELDS = ("gt_classes",)
# Per-image inputs in image coordinates that this model does not rescale.
_UNSUPPORTED_INPUTS = ("proposals", "sem_seg")


def resize_to_fixed_size(image: torch.Tensor, size: Tuple[int, int]) -> torch.Tensor:
    """Resize a (C, H, W) image to ``size`` = (height, width), as a float tensor.

    Bilinear with antialiasing: close to PIL's bilinear resize that detectron2's ``T.Resize``
    uses, and free of aliasing when large photos are shrunk to 320x320.
    """
    return F.interpolate(
        image[None].float(), size=size, mode="bilinear", align_corners=False, antialias=True
    )[0]


def _scale_instances(instances: Instances, size: Tuple[int, int]) -> Instances:
    """Ground truth of an image resized from ``instances.image_size`` to ``size``."""
    scale_y = size[0] / instances.image_size[0]
    scale_x = size[1] / instances.image_size[1]
    scaled = Instances(size)
    for name, value in instances.get_fields().items():
        if name == "gt_boxes":
            value = Boxes(value.tensor * value.tensor.new_tensor([scale_x, scale_y] * 2))
        elif name == "gt_keypoints":
            value = Keypoints(value.tensor * value.tensor.new_tensor([scale_x, scale_y, 1.0]))
        elif name not in _SIZE_INDEPENDENT_FIELDS:
            raise ValueError(
                f"FixedInputSizeRCNN cannot resize ground-truth field '{name}'; "
                f"it supports gt_boxes, gt_keypoints and {', '.join(_SIZE_INDEPENDENT_FIELDS)}."
            )
        scaled.set(name, value)
    return scaled


def resize_sample(inputs: Dict, size: Tuple[int, int], device=None) -> Dict:
    """A model input (a dataset mapper's output: ``image``, optional ``instances``) resized to
    ``size`` as :class:`FixedInputSizeRCNN` resizes it, ground truth included: what the model
    sees. ``height``/``width`` keep the size of the image given, unless set already."""
    image = inputs["image"]
    height, width = image.shape[-2:]
    if (height, width) == tuple(size):
        return inputs
    unsupported = [key for key in _UNSUPPORTED_INPUTS if key in inputs]
    if unsupported:
        raise ValueError(
            f"FixedInputSizeRCNN cannot resize the inputs {unsupported} of an image of "
            f"size {(height, width)} to INPUT.FIXED_SIZE={tuple(size)}"
        )
    inputs = dict(inputs)
    inputs["image"] = resize_to_fixed_size(image if device is None else image.to(device), size)
    # Results are mapped back to the size of the image given, unless told otherwise.
    inputs.setdefault("height", height)
    inputs.setdefault("width", width)
    if "instances" in inputs:
        inputs["instances"] = _scale_instances(inputs["instances"], size)
    return inputs


def _check_keys_of_other_keypoint_heads(cfg):
    """d2_edwpose's keypoint-head keys, for a keypoint head that is not d2_edwpose's: left at
    values that mean what it does, rather than silently ignored."""
    head = cfg.MODEL.ROI_KEYPOINT_HEAD
    head_class = ROI_KEYPOINT_HEAD_REGISTRY.get(head.NAME)
    if issubclass(head_class, KRCNNConfigurableConvDeconvUpsampleHead):
        return
    check_config_value(
        "MODEL.ROI_KEYPOINT_HEAD.CONV_TYPE",
        head.CONV_TYPE,
        head.CONV_TYPE == "vanilla",
        f"'vanilla': ROI_KEYPOINT_HEAD.NAME={head.NAME!r} has no such option (only "
        "'KRCNNConfigurableConvDeconvUpsampleHead' reads it)",
    )
    # -1 ("the datasets' number", d2_edwpose.data.catalog.num_keypoints) is resolved by
    # d2_edwpose's head only.
    check_config_value(
        "MODEL.ROI_KEYPOINT_HEAD.NUM_KEYPOINTS",
        head.NUM_KEYPOINTS,
        head.NUM_KEYPOINTS > 0,
        f"a positive integer: ROI_KEYPOINT_HEAD.NAME={head.NAME!r} does not take -1 (the "
        "datasets' number; only 'KRCNNConfigurableConvDeconvUpsampleHead' does)",
    )


@META_ARCH_REGISTRY.register()
class FixedInputSizeRCNN(GeneralizedRCNN):
    """detectron2's GeneralizedRCNN, with every input image resized to ``INPUT.FIXED_SIZE``.

    The resize is part of the model, so detectron2's own train/test loaders and its
    ``DefaultPredictor`` (whose shortest-edge resize is disabled by ``INPUT.MIN_SIZE_* = 0``)
    all apply exactly the same resize. Outputs come back in the coordinates of the image that
    was passed in (or of its ``height``/``width`` entries, as in detectron2), and images that
    already have the fixed size pass through untouched.
    """

    @configurable
    def __init__(self, *, input_size: Tuple[int, int], **kwargs):
        """
        Args:
            input_size: (height, width) every image is resized to.
            kwargs: arguments of :class:`GeneralizedRCNN`.
        """
        super().__init__(**kwargs)
        self.input_size = (int(input_size[0]), int(input_size[1]))

    @classmethod
    def from_config(cls, cfg):
        size = cfg.INPUT.FIXED_SIZE
        check_config_value(
            "INPUT.FIXED_SIZE",
            size,
            len(size) == 2 and all(is_int(s) and s > 0 for s in size),
            "(height, width), two positive integers",
        )
        if cfg.MODEL.KEYPOINT_ON:
            _check_keys_of_other_keypoint_heads(cfg)
        args = super().from_config(cfg)
        args["input_size"] = tuple(cfg.INPUT.FIXED_SIZE)
        return args

    def _resize_inputs(self, batched_inputs: List[Dict]) -> List[Dict]:
        return [resize_sample(inputs, self.input_size, self.device) for inputs in batched_inputs]

    def forward(self, batched_inputs: List[Dict[str, torch.Tensor]]):
        if not self.training:
            return self.inference(batched_inputs)
        return super().forward(self._resize_inputs(batched_inputs))

    def inference(self, batched_inputs, detected_instances=None, do_postprocess: bool = True):
        """As :meth:`GeneralizedRCNN.inference`; ``detected_instances`` must be given in
        ``INPUT.FIXED_SIZE`` coordinates."""
        return super().inference(
            self._resize_inputs(batched_inputs), detected_instances, do_postprocess
        )
