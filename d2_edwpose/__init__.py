"""Realtime multi-person pose estimation for detectron2 (Keypoint R-CNN, MobileNetV3, EDWConv).

``import d2_edwpose`` registers the project's backbone, heads, meta-architecture and
synthetic datasets into detectron2's registries and catalogs.

Layers, each importing only those below it (docs/contributing.md; checked by .importlinter):
``tools`` (command lines) > ``engine`` (training, evaluation) and ``export`` (ONNX,
TorchScript, INT8) > ``modeling`` (backbone, heads, layers) > ``model_zoo`` (the configs and
their loader) > ``data`` (datasets, keypoint sets, loaders, the image scan) > ``config`` (the
keys) > ``utils``, ``deploy`` (the torch-free runner) and ``compat`` (version shims).
"""
from . import compat

# Usually already installed at interpreter start-up by the set-up's .pth hook; this covers
# environments set up without it. Must precede every detectron2 import.
compat.install()

from . import data, modeling  # noqa: E402,F401  (registration)
from .config import add_edwpose_config  # noqa: E402

__all__ = ["add_edwpose_config"]
