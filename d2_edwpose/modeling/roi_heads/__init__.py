"""RoI heads; importing this package registers them in detectron2's registries."""
from .box_head import FastRCNNConfigurableConvFCHead, FastRCNNSeparableConvFCHead
from .keypoint_head import (
    KRCNNConfigurableConvDeconvUpsampleHead,
    KRCNNSeparableConvDeconvUpsampleHead,
)

__all__ = [
    "FastRCNNConfigurableConvFCHead",
    "FastRCNNSeparableConvFCHead",
    "KRCNNConfigurableConvDeconvUpsampleHead",
    "KRCNNSeparableConvDeconvUpsampleHead",
]
