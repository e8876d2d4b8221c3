"""Checkpoints: saving them safely, loading them with clear errors, and pretrained weights
from other model zoos renamed for d2_edwpose's models."""
import contextlib
import functools
import os
import secrets
from collections.abc import Mapping

import torch

from detectron2.checkpoint import DetectionCheckpointer

from .modeling.backbone.mobilenetv3 import ARCHS, MobileNetV3

__all__ = ["MOBILENETV3_PREFIX", "SafeCheckpointer", "atomic_open", "convert_torchvision_mobilenetv3"]

# Where the MobileNetV3 of build_mobilenetv3_fpn_backbone sits in a detectron2 model.
MOBILENETV3_PREFIX = "backbone.bottom_up."

# Keys of torchvision's MobileNetV3 that a detector has no use for: the ImageNet classifier,
# and BatchNorm's update counter (FrozenBN has none; BN only uses it when momentum is None).
_IGNORED_PREFIX = "classifier."
_IGNORED_SUFFIX = ".num_batches_tracked"
# Checkpoint formats that hold the state dict under a key (torchvision's reference scripts
# write {"model": ...}; many others {"state_dict": ...}).
_WRAPPER_KEYS = ("model", "state_dict")


@functools.lru_cache(maxsize=None)
def _mobilenetv3_keys(arch):
    """The state-dict keys of torchvision's ``mobilenet_v3_<arch>`` less the ignored ones."""
    # Our backbone has torchvision's keys by construction; FrozenBN has exactly BatchNorm's
    # keys but num_batches_tracked. The meta device skips allocating and initialising weights.
    with torch.device("meta"):
        return tuple(MobileNetV3(arch, norm="FrozenBN").state_dict())


def _some(keys, limit=6):
    shown = ", ".join(keys[:limit])
    return shown + (f", ... ({len(keys) - limit} more)" if len(keys) > limit else "")


def _check_mobilenetv3_keys(keys):
    """Raise ValueError, naming the differences, unless ``keys`` are those of an architecture."""
    given = set(keys)
    mismatches = []
    for arch in ARCHS:
        expected = _mobilenetv3_keys(arch)
        expected_set = set(expected)
        missing = [k for k in expected if k not in given]
        unexpected = [k for k in keys if k not in expected_set]
        if not missing and not unexpected:
            return
        mismatches.append((len(missing) + len(unexpected), arch, missing, unexpected))
    _, arch, missing, unexpected = min(mismatches)
    problems = []
    if missing:
        problems.append(f"missing {len(missing)} keys: {_some(missing)}")
    if unexpected:
        problems.append(f"{len(unexpected)} unexpected keys: {_some(unexpected)}")
    raise ValueError(
        f"not a state dict of torchvision's MobileNetV3; compared with the closest, "
        f"mobilenet_v3_{arch}, it has " + "; ".join(problems)
    )


def convert_torchvision_mobilenetv3(state_dict):
    """Rename torchvision MobileNetV3 weights for ``build_mobilenetv3_fpn_backbone``.

    torchvision's ``features.<i>.<...>`` is ``backbone.bottom_up.features.<i>.<...>`` here (see
    :mod:`d2_edwpose.modeling.backbone.mobilenetv3`), BatchNorm running statistics included;
    the classifier and ``num_batches_tracked`` are dropped.

    Args:
        state_dict (Mapping[str, Tensor]): of ``mobilenet_v3_large`` or ``mobilenet_v3_small``
            (any width), such as the published ImageNet .pth files; or a checkpoint holding
            it under "model" or "state_dict".

    Returns:
        dict[str, Tensor]: detectron2 parameter name -> CPU tensor, in torchvision's order.

    Raises:
        ValueError: if the keys are not those of a torchvision MobileNetV3.
    """
    if not isinstance(state_dict, Mapping):
        raise ValueError(f"expected a state dict (a mapping), got a {type(state_dict).__name__}")
    for wrapper_key in _WRAPPER_KEYS:
        if isinstance(state_dict.get(wrapper_key), Mapping):
            state_dict = state_dict[wrapper_key]
            break
    weights = {
        name: value
        for name, value in state_dict.items()
        if not name.startswith(_IGNORED_PREFIX) and not name.endswith(_IGNORED_SUFFIX)
    }
    _check_mobilenetv3_keys(list(weights))
    not_tensors = [name for name, value in weights.items() if not isinstance(value, torch.Tensor)]
    if not_tensors:
        raise ValueError(f"values of {_some(not_tensors)} are not tensors")
    return {MOBILENETV3_PREFIX + name: value.detach().cpu() for name, value in weights.items()}


def _is_local(path):
    return "://" not in path


@contextlib.contextmanager
def atomic_open(path, mode, **kwargs):
    """Like ``open(path, mode)`` for writing, but the file appears under ``path`` only once it
    is complete: it is written to a temporary file in the same folder, flushed to disk and
    renamed over ``path`` (``os.replace`` is atomic). If the writer fails, ``path`` is left as
    it was; if the process is killed, a hidden ``.<name>.<random>.tmp`` file is left instead.
    """
    directory, name = os.path.split(os.path.abspath(path))
    temporary = os.path.join(directory, f".{name}.{secrets.token_hex(4)}.tmp")
    try:
        # "x": a new file, with the permissions open() gives (unlike tempfile's 0600).
        with open(temporary, "x" + mode[1:], **kwargs) as f:
            yield f
            f.flush()
            os.fsync(f.fileno())
        os.replace(temporary, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.remove(temporary)
        raise
    if os.name == "posix":  # make the rename itself durable, e.g. across a power cut
        folder = os.open(directory, os.O_RDONLY)
        try:
            os.fsync(folder)
        finally:
            os.close(folder)


class _AtomicWrites:
    """A path manager (iopath's interface) whose ``open(path, "w"/"wb")`` of a local file
    writes atomically (:func:`atomic_open`); everything else is the wrapped manager's."""

    def __init__(self, path_manager):
        self._path_manager = path_manager

    def __getattr__(self, name):
        return getattr(self._path_manager, name)

    def open(self, path, mode="r", **kwargs):
        if mode in ("w", "wb") and _is_local(path):
            return atomic_open(path, mode, **kwargs)
        return self._path_manager.open(path, mode, **kwargs)


class SafeCheckpointer(DetectionCheckpointer):
    """detectron2's ``DetectionCheckpointer`` that never leaves a half-written checkpoint and
    refuses weights that do not belong to the model.

    * Saving: fvcore's ``Checkpointer.save`` writes the checkpoint, then the ``last_checkpoint``
      tag, through ``self.path_manager.open``; both are written atomically here, so a job
      killed while saving leaves the previous checkpoint and tag intact and loadable.
    * ``resume_or_load(cfg.MODEL.WEIGHTS, ...)`` with a local path that does not exist raises
      FileNotFoundError naming ``MODEL.WEIGHTS`` (fvcore raises an AssertionError).
    * A checkpoint of which fewer than half the tensors fit the model (by name and shape) is
      taken to be of another architecture: ValueError listing the mismatched, unused and
      missing keys. A partial fit (ImageNet backbone weights, another keypoint head) loads with
      fvcore's warnings, which list what was skipped. Checkpoints that detectron2 renames by
      heuristics (Detectron1/Caffe2 .pkl files) are left to those heuristics.
    """

    # Smallest share of a checkpoint's tensors that must fit the model.
    MIN_FITTING_FRACTION = 0.5

    def __init__(self, model, save_dir="", *, save_to_disk=None, **checkpointables):
        super().__init__(model, save_dir, save_to_disk=save_to_disk, **checkpointables)
        self.path_manager = _AtomicWrites(self.path_manager)
        self._loading = None

    def resume_or_load(self, path, *, resume=True):
        """As detectron2's, with ``path`` being ``cfg.MODEL.WEIGHTS``: "" starts from scratch."""
        if resume and self.has_checkpoint():
            last = self.get_checkpoint_file()
            if not self.path_manager.isfile(last):
                raise FileNotFoundError(
                    f"{os.path.join(self.save_dir, 'last_checkpoint')} names the checkpoint "
                    f"{last!r}, which does not exist. Restore it, or edit last_checkpoint to name "
                    "another checkpoint of this folder."
                )
        elif path and _is_local(path) and not os.path.isfile(path):
            raise FileNotFoundError(
                f"MODEL.WEIGHTS={path!r}: no such file ({os.path.abspath(path)}). Set "
                'MODEL.WEIGHTS to a checkpoint file (.pth, .pkl), or to "" to start from scratch.'
            )
        return super().resume_or_load(path, resume=resume)

    def load(self, path, *args, **kwargs):
        self._loading = path
        try:
            return super().load(path, *args, **kwargs)
        finally:
            self._loading = None

    def _load_model(self, checkpoint):
        if checkpoint.get("matching_heuristics", False):
            return super()._load_model(checkpoint)
        names = list(checkpoint["model"])  # fvcore's _load_model pops "model"
        incompatible = super()._load_model(checkpoint)
        shapes = {key: (saved, model) for key, saved, model in incompatible.incorrect_shapes}
        unused = set(incompatible.unexpected_keys) | set(shapes)
        fitting = len(names) - len(unused)
        if fitting < self.MIN_FITTING_FRACTION * len(names):
            problems = []
            if shapes:
                problems.append(
                    f"{len(shapes)} with another shape (checkpoint vs model): "
                    + _some([f"{key} {saved} vs {model}" for key, (saved, model) in shapes.items()])
                )
            if incompatible.unexpected_keys:
                problems.append(
                    f"{len(incompatible.unexpected_keys)} not in the model: "
                    + _some(list(incompatible.unexpected_keys))
                )
            missing = [key for key in incompatible.missing_keys if key not in shapes]
            if missing:
                problems.append(
                    f"model parameters and buffers not in the checkpoint ({len(missing)}): "
                    + _some(missing)
                )
            raise ValueError(
                f"Checkpoint {self._loading!r} does not fit the model: only {fitting} of its "
                f"{len(names)} tensors match a parameter or buffer by name and shape (at least "
                f"{self.MIN_FITTING_FRACTION:.0%} must). It is probably of another architecture "
                "(check MODEL.WEIGHTS against MODEL.MOBILENETV3.ARCH, MODEL.FPN.OUT_CHANNELS, "
                "MODEL.ROI_KEYPOINT_HEAD.CONV_DIMS/CONV_TYPE, ...). Checkpoint tensors "
                + "; ".join(problems)
            )
        return incompatible
