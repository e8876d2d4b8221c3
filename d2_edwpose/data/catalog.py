"""Checks of registered datasets made before a run starts: their files exist, and their
keypoint sets match the config's model and evaluation; and the metadata of the keypoint set a
config's model predicts, to draw and export its poses with."""

import logging
import os

from detectron2.data import DatasetCatalog, MetadataCatalog
from detectron2.data.datasets.builtin_meta import _get_builtin_metadata
from detectron2.utils.logger import log_first_n

from ..utils.validation import check_config_value, is_int
from .keypoint_sets import COCO_PERSON_OKS_SIGMAS, validate_keypoint_set
from .synthetic import GENERATE_COMMAND

__all__ = [
    "NUM_KEYPOINTS_FROM_DATASETS",
    "check_keypoint_datasets",
    "check_num_classes",
    "check_registered",
    "keypoint_metadata",
    "num_keypoints",
    "oks_sigmas",
    "verify_dataset_files",
]

# MODEL.ROI_KEYPOINT_HEAD.NUM_KEYPOINTS's value for "the number of keypoints of the datasets".
NUM_KEYPOINTS_FROM_DATASETS = -1

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


def oks_sigmas(cfg, dataset_name):
    """The OKS sigmas to evaluate ``dataset_name`` with: ``TEST.KEYPOINT_OKS_SIGMAS`` when set,
    else the dataset's ``keypoint_oks_sigmas`` metadata (:func:`register_keypoint_dataset`),
    else ``()``, which COCOEvaluator reads as COCO's 17 person sigmas."""
    if cfg.TEST.KEYPOINT_OKS_SIGMAS:
        return list(cfg.TEST.KEYPOINT_OKS_SIGMAS)
    return list(MetadataCatalog.get(dataset_name).get("keypoint_oks_sigmas", ()))


def num_keypoints(cfg):
    """``MODEL.ROI_KEYPOINT_HEAD.NUM_KEYPOINTS``, or, when it is
    :data:`NUM_KEYPOINTS_FROM_DATASETS` (-1), the number of keypoint names of the first
    dataset of ``DATASETS.TRAIN`` + ``DATASETS.TEST`` registered with keypoint names (the
    others must agree: :func:`check_keypoint_datasets`). What the keypoint head is built with
    and what the checks compare the datasets to."""
    return _num_keypoints_and_source(cfg)[0]


def keypoint_metadata(cfg):
    """The metadata to draw with: that of the config's first dataset with keypoint names (its
    keypoint set and skeleton, as the model was trained on), else COCO's person keypoints.

    Raises ValueError when that keypoint set does not have ``NUM_KEYPOINTS`` keypoints: the
    Visualizer would silently draw keypoints under other names."""
    for name in [*cfg.DATASETS.TEST, *cfg.DATASETS.TRAIN]:
        metadata = MetadataCatalog.get(name)
        if metadata.get("keypoint_names"):
            break
    else:
        name = "COCO's person keypoints"
        metadata = MetadataCatalog.get("__d2_edwpose_demo").set(
            **_get_builtin_metadata("coco_person")
        )
    count = num_keypoints(cfg)
    if len(metadata.keypoint_names) != count:
        raise ValueError(
            f"MODEL.ROI_KEYPOINT_HEAD.NUM_KEYPOINTS={count}, but the keypoint set to draw "
            f"with ({name}) has {len(metadata.keypoint_names)}: set DATASETS.TEST to a "
            "registered dataset of the model's keypoint set (d2_edwpose.data.register_keypoint_dataset)"
        )
    return metadata


def _num_keypoints_and_source(cfg):
    """:func:`num_keypoints` and the name of the dataset it was taken from (None when
    ``NUM_KEYPOINTS`` is a number)."""
    value = cfg.MODEL.ROI_KEYPOINT_HEAD.NUM_KEYPOINTS
    if value != NUM_KEYPOINTS_FROM_DATASETS:
        check_config_value(
            "MODEL.ROI_KEYPOINT_HEAD.NUM_KEYPOINTS",
            value,
            is_int(value) and value > 0,
            f"a positive integer, or {NUM_KEYPOINTS_FROM_DATASETS} for the number of keypoints "
            "of the config's datasets",
        )
        return value, None
    names = [*cfg.DATASETS.TRAIN, *cfg.DATASETS.TEST]
    for name in names:
        keypoint_names = (
            MetadataCatalog.get(name).get("keypoint_names")
            if name in MetadataCatalog.list()
            else None
        )
        if keypoint_names:
            log_first_n(
                logging.INFO,
                f"MODEL.ROI_KEYPOINT_HEAD.NUM_KEYPOINTS={NUM_KEYPOINTS_FROM_DATASETS}: "
                f"{len(keypoint_names)}, the keypoints of dataset '{name}'",
                n=1,
                key="message",
            )
            return len(keypoint_names), name
    raise ValueError(
        f"MODEL.ROI_KEYPOINT_HEAD.NUM_KEYPOINTS={NUM_KEYPOINTS_FROM_DATASETS} takes the number of "
        "keypoints from the config's datasets, but none of DATASETS.TRAIN + DATASETS.TEST "
        f"{names} is registered with keypoint names (a DATASETS.COCO_KEYPOINTS entry without "
        "KEYPOINT_SET has them only when its JSON_FILE exists): declare the datasets, or set "
        "MODEL.ROI_KEYPOINT_HEAD.NUM_KEYPOINTS"
    )


def check_registered(train_names, test_names):
    """Raise KeyError naming ``DATASETS.TRAIN``/``DATASETS.TEST`` and the registered names for
    a dataset name that nothing registered (a typo, or a dataset declared nowhere)."""
    registered = DatasetCatalog.list()
    for key, names in (("DATASETS.TRAIN", train_names), ("DATASETS.TEST", test_names)):
        for name in names:
            if name not in registered:
                raise KeyError(
                    f"{key} names the dataset '{name}', which is not registered: declare it under "
                    "DATASETS.COCO_KEYPOINTS or register it with "
                    f"d2_edwpose.data.register_keypoint_dataset; registered: {sorted(registered)}"
                )


def _num_keypoints_setting(cfg):
    """:func:`num_keypoints` and the words that name where it comes from, for errors."""
    count, source = _num_keypoints_and_source(cfg)
    if source is None:
        return count, f"MODEL.ROI_KEYPOINT_HEAD.NUM_KEYPOINTS={count}"
    source_key = "DATASETS.TRAIN" if source in cfg.DATASETS.TRAIN else "DATASETS.TEST"
    return count, (
        f"MODEL.ROI_KEYPOINT_HEAD.NUM_KEYPOINTS={NUM_KEYPOINTS_FROM_DATASETS} resolved to "
        f"{count} from dataset '{source}' ({source_key})"
    )


def _check_test_oks_sigmas(cfg, name, count):
    """The OKS sigmas that evaluate test set ``name``: one per keypoint, and
    ``TEST.KEYPOINT_OKS_SIGMAS`` not contradicting the dataset's own."""
    sigmas = oks_sigmas(cfg, name) or COCO_PERSON_OKS_SIGMAS
    declared = MetadataCatalog.get(name).get("keypoint_oks_sigmas")
    if len(sigmas) != count:
        source = (
            f"TEST.KEYPOINT_OKS_SIGMAS has {len(sigmas)} values"
            if cfg.TEST.KEYPOINT_OKS_SIGMAS
            else f"dataset '{name}' declares no OKS sigmas, and COCO's {len(sigmas)} apply"
        )
        raise ValueError(
            f"{source}, but dataset '{name}' has {count} keypoints: set "
            f"TEST.KEYPOINT_OKS_SIGMAS to its {count} sigmas"
            + (", or to [] to use the dataset's" if declared else "")
        )
    if cfg.TEST.KEYPOINT_OKS_SIGMAS and declared and list(sigmas) != list(declared):
        raise ValueError(
            f"TEST.KEYPOINT_OKS_SIGMAS={list(sigmas)} differs from the OKS sigmas of dataset "
            f"'{name}' ({list(declared)}): set TEST.KEYPOINT_OKS_SIGMAS [] to use the "
            f"dataset's (those of DATASETS.COCO_KEYPOINTS.{name}.OKS_SIGMAS for a dataset "
            "declared there)"
        )


def check_keypoint_datasets(cfg, train_names, test_names):
    """Raise ValueError, naming the config key, the dataset and both values, where the keypoint
    model of ``cfg`` and the keypoint sets of its datasets disagree: the number of keypoints
    (``MODEL.ROI_KEYPOINT_HEAD.NUM_KEYPOINTS``), the keypoint names of the training and test
    sets (the same, in the same order), the metadata's flip map and skeleton, and the OKS sigmas
    (``TEST.KEYPOINT_OKS_SIGMAS``, or the dataset's). Reads only the metadata; the annotations
    are checked as the datasets load. Nothing to check without keypoints."""
    if not cfg.MODEL.KEYPOINT_ON:
        return
    count = setting = first = None
    for name in dict.fromkeys([*train_names, *test_names]):
        key = "DATASETS.TRAIN" if name in train_names else "DATASETS.TEST"
        metadata = MetadataCatalog.get(name)
        names = metadata.get("keypoint_names")
        if names is None:
            raise ValueError(
                f"Dataset '{name}' ({key}) has no keypoint_names in its metadata, so its keypoints "
                "cannot be matched to the model's: register it with "
                "d2_edwpose.data.register_keypoint_dataset (or set its metadata's keypoint_names "
                "and keypoint_flip_map)"
            )
        if count is None:
            count, setting = _num_keypoints_setting(cfg)
        if len(names) != count:
            raise ValueError(
                f"{setting} does not match dataset "
                f"'{name}' ({key}), which has {len(names)} keypoints ({list(names)}): set "
                f"MODEL.ROI_KEYPOINT_HEAD.NUM_KEYPOINTS {len(names)} (or "
                f"{NUM_KEYPOINTS_FROM_DATASETS}: the datasets' number)"
            )
        first = first or (name, list(names))
        if list(names) != first[1]:
            raise ValueError(
                f"Dataset '{name}' ({key}) names its keypoints {list(names)}, dataset "
                f"'{first[0]}' {first[1]}: a model trains and evaluates on one keypoint set, in "
                "one order"
            )
        flip_map = metadata.get("keypoint_flip_map")
        if name in train_names and flip_map is None:
            # detectron2's DatasetMapper reads it to train keypoints, flipping or not.
            raise ValueError(
                f"Dataset '{name}' (DATASETS.TRAIN) has no keypoint_flip_map in its metadata, "
                "which training keypoints needs: register it with "
                "d2_edwpose.data.register_keypoint_dataset (keypoint_flip_map=() when no "
                "keypoint has a mirror-image twin)"
            )
        validate_keypoint_set(
            names,
            flip_map,
            metadata.get("keypoint_connection_rules"),
            metadata.get("keypoint_oks_sigmas"),
            where=f"Dataset '{name}' metadata",
        )
        if name in test_names:
            _check_test_oks_sigmas(cfg, name, count)


def check_num_classes(cfg, dataset_names):
    """Raise ValueError naming ``MODEL.ROI_HEADS.NUM_CLASSES``, the dataset and its classes
    when a loaded dataset has another number of classes (its file's categories, or those it
    keeps, or its one class): detectron2 would train the extra ones as background (its label
    for background is NUM_CLASSES)."""
    for name in dataset_names:
        classes = MetadataCatalog.get(name).get("thing_classes")
        if classes is not None and len(classes) != cfg.MODEL.ROI_HEADS.NUM_CLASSES:
            raise ValueError(
                f"MODEL.ROI_HEADS.NUM_CLASSES={cfg.MODEL.ROI_HEADS.NUM_CLASSES} does not match "
                f"dataset '{name}', which has {len(classes)} classes {list(classes)}: set "
                f"MODEL.ROI_HEADS.NUM_CLASSES {len(classes)}, or train them as one class "
                f"(DATASETS.COCO_KEYPOINTS.{name}.ONE_CLASS: a class name) or keep some "
                f"(DATASETS.COCO_KEYPOINTS.{name}.CATEGORIES: their names)"
            )
