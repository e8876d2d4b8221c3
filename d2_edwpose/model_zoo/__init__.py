"""The project's configs, by name, from wherever the package is installed, and the one loader
of any config file (:func:`load_config`).

The yaml files are package data (``configs/`` here), so that a non-editable install ships them;
a clone reaches the same files through its top-level ``configs`` link. Named like
:mod:`detectron2.model_zoo`, whose ``get_config_file`` and ``get_config`` these mirror.
"""
from pathlib import Path

from detectron2.config import get_cfg

from ..config import add_edwpose_config
from ..data import register_config_datasets

__all__ = [
    "CONFIG_DIR",
    "PAPER_CONFIGS",
    "REALTIME_CONFIG",
    "STOCK_R50_CONFIG",
    "get_config",
    "get_config_file",
    "list_configs",
    "load_config",
]

CONFIG_DIR = Path(__file__).resolve().parent / "configs"
# The paper's three keypoint heads (vanilla, DWConv, EDWConv) on MobileNetV3-FPN at 320x320.
PAPER_CONFIGS = [
    CONFIG_DIR / f"keypoint_rcnn_mv3_fpn_320_{t}.yaml" for t in ("vanilla", "dw", "edw")
]
REALTIME_CONFIG = CONFIG_DIR / "keypoint_rcnn_mv3_fpn_320_realtime.yaml"
# detectron2's stock Keypoint R-CNN (R50-FPN, 3x), the reference of the analysis and benchmark:
# a name for detectron2.model_zoo.get_config_file.
STOCK_R50_CONFIG = "COCO-Keypoints/keypoint_rcnn_R_50_FPN_3x.yaml"


def load_config(config_file=None, opts=(), *, register_datasets=True):
    """detectron2's defaults, d2_edwpose's keys (:func:`~d2_edwpose.config.add_edwpose_config`),
    the yaml file ``config_file`` (its ``_BASE_`` chain included; None: the defaults alone) and
    the ``KEY VALUE ...`` overrides ``opts``, as the tools and ``train_net.py`` load a config.

    The datasets that ``DATASETS.COCO_KEYPOINTS`` declares are then registered
    (:func:`~d2_edwpose.data.register_config_datasets`), so that ``NUM_KEYPOINTS`` -1 resolves
    to their number of keypoints; ``register_datasets=False`` leaves that to the caller (who
    registers them later, e.g. once its logger writes to the run's folder)."""
    cfg = get_cfg()
    add_edwpose_config(cfg)
    if config_file is not None:
        cfg.merge_from_file(str(config_file))
    cfg.merge_from_list(list(opts))
    if register_datasets:
        register_config_datasets(cfg)
    return cfg


def list_configs():
    """The names of the shipped configs (file names without ``.yaml``), sorted."""
    return sorted(path.stem for path in CONFIG_DIR.glob("*.yaml"))


def get_config_file(name):
    """The path (str) of the shipped config ``name``, with or without ``.yaml``, e.g.
    ``"keypoint_rcnn_mv3_fpn_320_edw"``; RuntimeError naming the available ones otherwise."""
    stem = name[: -len(".yaml")] if name.endswith(".yaml") else name
    if stem not in list_configs():
        raise RuntimeError(
            f"{name!r} is not a d2_edwpose config; available: {', '.join(list_configs()) or 'none'}"
        )
    return str(CONFIG_DIR / f"{stem}.yaml")


def get_config(name):
    """The CfgNode of the shipped config ``name``, loaded by :func:`load_config`: detectron2's
    defaults, d2_edwpose's keys and the file, its ``_BASE_`` chain included."""
    return load_config(get_config_file(name))
