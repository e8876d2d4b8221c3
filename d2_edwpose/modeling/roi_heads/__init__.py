"""RoI heads; importing this package registers them in detectron2's registries."""

from .box_head import FastRCNNConfigurableConvFCHead
from .keypoint_head import KRCNNConfigurableConvDeconvUpsampleHead

__all__ = ["FastRCNNConfigurableConvFCHead", "KRCNNConfigurableConvDeconvUpsampleHead"]
