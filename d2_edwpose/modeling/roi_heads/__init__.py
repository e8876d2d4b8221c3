"""RoI heads; importing this package registers them in detectron2's registries."""
from .keypoint_head import KRCNNSeparableConvDeconvUpsampleHead

__all__ = ["KRCNNSeparableConvDeconvUpsampleHead"]
