"""``synthetic_keypoints_{train,val}`` in detectron2's catalogs, with a loader that says how to
generate the dataset when it is missing."""

import functools
import logging
import os
import shlex

from detectron2.data import DatasetCatalog, MetadataCatalog
from detectron2.data.datasets.builtin_meta import _get_builtin_metadata
from detectron2.data.datasets.coco import load_coco_json

from .generation import SPLITS, split_paths

logger = logging.getLogger(__name__)

DATASET_NAMES = tuple(f"synthetic_keypoints_{split}" for split in SPLITS)
GENERATE_COMMAND = "python -m d2_edwpose.tools.generate_synthetic_keypoints"


def default_root():
    """The root the datasets are registered for at import, and the CLI's default ``--output``."""
    root = os.environ.get("D2_EDWPOSE_SYNTHETIC_ROOT")
    if root:
        return os.path.expanduser(root)
    base = os.path.expanduser(os.getenv("DETECTRON2_DATASETS", "datasets"))
    return os.path.join(base, "synthetic_keypoints")


def _load_split(json_file, image_root, dataset_name, root):
    """detectron2's COCO loader, with an actionable error when the dataset is missing."""
    if not os.path.isfile(json_file):
        raise FileNotFoundError(
            f"Dataset '{dataset_name}': annotation file {json_file} not found. Generate the "
            f"synthetic dataset with: {GENERATE_COMMAND} --output {shlex.quote(root)}"
        )
    return load_coco_json(json_file, image_root, dataset_name)


def register_synthetic_keypoints(root):
    """Register ``synthetic_keypoints_{train,val}`` for the dataset under `root`.

    Lazy: nothing is read until the dataset is used. Registering again with the same root
    is a no-op; with another root, the names are re-pointed to it.
    """
    root = os.fspath(root)
    for split, name in zip(SPLITS, DATASET_NAMES):
        json_file, image_root = split_paths(root, split)
        if name in DatasetCatalog.list():
            if MetadataCatalog.get(name).get("json_file") == json_file:
                continue
            logger.info(f"Re-registering {name} for {json_file}.")
            DatasetCatalog.remove(name)
            MetadataCatalog.remove(name)
        # The same catalog entries as detectron2's register_coco_instances, with a loader
        # that explains how to create a missing dataset.
        DatasetCatalog.register(
            name, functools.partial(_load_split, json_file, image_root, name, root)
        )
        MetadataCatalog.get(name).set(
            json_file=json_file,
            image_root=image_root,
            evaluator_type="coco",
            **_get_builtin_metadata("coco_person"),
        )
