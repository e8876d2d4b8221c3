"""Datasets: registration of COCO-format keypoint data with any keypoint set, the synthetic
people (``synthetic_keypoints_{train,val}``, registered on import), and their checks."""

from . import catalog, synthetic  # noqa: F401  (registration)
from .coco_keypoints import register_config_datasets, register_keypoint_dataset
from .keypoint_sets import COCO_PERSON_KEYPOINTS, CROWDPOSE_KEYPOINTS, KEYPOINT_SETS

__all__ = [
    "COCO_PERSON_KEYPOINTS",
    "CROWDPOSE_KEYPOINTS",
    "KEYPOINT_SETS",
    "register_config_datasets",
    "register_keypoint_dataset",
]
