"""detectron2's checkpointer with atomic saves and loads that fail clearly: a missing weights
file, or a checkpoint of another architecture, is an error naming what to fix instead of a
model that runs with weights it could not load left random."""

import os

from detectron2.checkpoint import DetectionCheckpointer

from ..utils.atomic_files import atomic_open
from ..utils.messages import abbreviate_keys

__all__ = ["AtomicValidatingCheckpointer"]


def _is_local(path):
    return "://" not in path


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


class AtomicValidatingCheckpointer(DetectionCheckpointer):
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
                    + abbreviate_keys(
                        [f"{key} {saved} vs {model}" for key, (saved, model) in shapes.items()]
                    )
                )
            if incompatible.unexpected_keys:
                problems.append(
                    f"{len(incompatible.unexpected_keys)} not in the model: "
                    + abbreviate_keys(list(incompatible.unexpected_keys))
                )
            missing = [key for key in incompatible.missing_keys if key not in shapes]
            if missing:
                problems.append(
                    f"model parameters and buffers not in the checkpoint ({len(missing)}): "
                    + abbreviate_keys(missing)
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
