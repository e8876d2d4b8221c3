"""Realtime multi-person pose estimation for detectron2 (Keypoint R-CNN, MobileNetV3, EDWConv).

``import d2_edwpose`` registers the project's components into detectron2's registries.
"""
from . import compat

compat.install()

from .config import add_edwpose_config  # noqa: E402

__all__ = ["add_edwpose_config"]
