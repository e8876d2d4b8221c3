"""Checks that a registered dataset's files exist before any loader or worker touches them."""
import os

from detectron2.data import MetadataCatalog

from .synthetic import GENERATE_COMMAND

__all__ = ["verify_dataset_files"]

_HOW_TO_GET = {
    "keypoints_coco_": (
        "Download COCO 2017 (annotations_trainval2017.zip, train2017.zip, val2017.zip) from "
        "https://cocodataset.org/#download and lay it out as described in datasets/README.md; "
        "detectron2 looks under $DETECTRON2_DATASETS (default: ./datasets)."
    ),
    "synthetic_keypoints_": (
        f"Generate it with `{GENERATE_COMMAND}` (see its --help), or set "
        "D2_EDWPOSE_SYNTHETIC_ROOT to where it was generated."
    ),
}


def verify_dataset_files(dataset_names):
    """Raise FileNotFoundError naming the missing file and how to get it.

    Only datasets registered with a ``json_file``/``image_root`` (detectron2's COCO-format
    registrations) are checked; others are left to their own loaders.
    """
    for name in dataset_names:
        metadata = MetadataCatalog.get(name)
        for key in ("json_file", "image_root"):
            path = getattr(metadata, key, None)
            if path is None or os.path.exists(path):
                continue
            hint = next(
                (text for prefix, text in _HOW_TO_GET.items() if name.startswith(prefix)),
                "See datasets/README.md.",
            )
            raise FileNotFoundError(
                f"Dataset '{name}': {key} '{os.path.abspath(path)}' does not exist. {hint}"
            )
