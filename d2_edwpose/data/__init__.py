"""Datasets: registration of COCO-format keypoint data with any keypoint set (given, or read
from the file's categories), the synthetic people (``synthetic_keypoints_{train,val}``,
registered on import), their checks, and YOLO-pose conversion."""

from . import catalog, synthetic  # noqa: F401  (registration)
from .coco_categories import keypoint_set_from_file
from .coco_keypoints import register_config_datasets, register_keypoint_dataset
from .keypoint_sets import COCO_PERSON_KEYPOINTS, CROWDPOSE_KEYPOINTS, KEYPOINT_SETS

__all__ = [
    "COCO_PERSON_KEYPOINTS",
    "CROWDPOSE_KEYPOINTS",
    "KEYPOINT_SETS",
    "keypoint_set_from_file",
    "register_config_datasets",
    "register_keypoint_dataset",
]
