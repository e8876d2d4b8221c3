"""RoI heads; importing this package registers them in detectron2's registries."""
from .box_head import FastRCNNSeparableConvFCHead
from .keypoint_head import KRCNNSeparableConvDeconvUpsampleHead

__all__ = ["FastRCNNSeparableConvFCHead", "KRCNNSeparableConvDeconvUpsampleHead"]
