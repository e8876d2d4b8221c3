"""Backbones; importing this package registers them in detectron2's BACKBONE_REGISTRY."""
from .mobilenetv3 import (
    ARCHS,
    MobileNetV3,
    build_mobilenetv3_backbone,
    build_mobilenetv3_fpn_backbone,
)

__all__ = [
    "ARCHS",
    "MobileNetV3",
    "build_mobilenetv3_backbone",
    "build_mobilenetv3_fpn_backbone",
]
