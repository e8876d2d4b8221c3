"""The project's configs, by name, from wherever the package is installed.

The yaml files are package data (``configs/`` here), so that a non-editable install ships them;
a clone reaches the same files through its top-level ``configs`` link. Named like
:mod:`detectron2.model_zoo`, whose ``get_config_file`` and ``get_config`` these mirror.
"""
from pathlib import Path

from detectron2.config import get_cfg

from ..config import add_edwpose_config

__all__ = ["CONFIG_DIR", "get_config", "get_config_file", "list_configs"]

CONFIG_DIR = Path(__file__).resolve().parent / "configs"


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
    """The CfgNode of the shipped config ``name``: detectron2's defaults, d2_edwpose's keys
    (:func:`~d2_edwpose.config.add_edwpose_config`) and the file, its ``_BASE_`` chain included."""
    cfg = get_cfg()
    add_edwpose_config(cfg)
    cfg.merge_from_file(get_config_file(name))
    return cfg
