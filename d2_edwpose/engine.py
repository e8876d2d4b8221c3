"""The trainer used by train_net.py and the CPU demo."""
import logging
import os
import weakref

from detectron2.data import DatasetMapper, build_detection_test_loader
from detectron2.engine import DefaultPredictor, DefaultTrainer
from detectron2.evaluation import COCOEvaluator
from detectron2.utils import comm

from .checkpoint import SafeCheckpointer
from .config import validate_edwpose_config
from .data.catalog import verify_dataset_files
from .data.checks import ReportingMapper
from .data.train_loader import (
    MODEL_STREAM,
    build_resumable_train_loader,
    derive_seed,
    seed_process_rngs,
)

__all__ = ["Trainer", "build_predictor"]

logger = logging.getLogger(__name__)


def _with_run_seed(cfg):
    """``cfg`` with a non-negative SEED: a negative SEED (detectron2's default, "random") is
    replaced by a random one shared by all ranks, so that the run, and checkpoints of it, have
    a seed to resume from."""
    if cfg.SEED >= 0:
        return cfg
    cfg = cfg.clone()
    frozen = cfg.is_frozen()
    cfg.defrost()
    cfg.SEED = comm.shared_random_seed()
    if frozen:
        cfg.freeze()
    logger.info(f"SEED < 0: this run uses the random seed {cfg.SEED} (saved in its checkpoints).")
    return cfg


def build_predictor(cfg) -> DefaultPredictor:
    """detectron2's ``DefaultPredictor(cfg)``, with ``cfg.MODEL.WEIGHTS`` loaded by
    :class:`~d2_edwpose.checkpoint.SafeCheckpointer`: a missing file, or a checkpoint of another
    architecture, is an error naming ``MODEL.WEIGHTS`` instead of a model that runs with the
    weights it could not load left random (``DefaultPredictor`` only logs them)."""
    validate_edwpose_config(cfg)
    from_scratch = cfg.clone()
    from_scratch.defrost()
    from_scratch.MODEL.WEIGHTS = ""
    predictor = DefaultPredictor(from_scratch)
    SafeCheckpointer(predictor.model).resume_or_load(cfg.MODEL.WEIGHTS, resume=False)
    predictor.cfg = cfg.clone()
    return predictor


class Trainer(DefaultTrainer):
    """detectron2's DefaultTrainer with COCO keypoint evaluation, early config and dataset
    checks, and exact resumption.

    A run resumed with ``resume_or_load(resume=True)`` after a kill continues exactly as if it
    had never stopped (same seed, deterministic ops): every random choice of training is a
    function of the run's seed and the iteration, not of RNG states that a kill loses:

    * the data order and augmentations (:mod:`d2_edwpose.data.train_loader`); the loader is
      pointed at the resumed iteration before it produces its first batch;
    * the model's sampling of anchors and RoIs (``torch.randperm``), whose RNGs are reseeded
      before every iteration from (seed, iteration, rank);
    * the seed itself, saved in every checkpoint (``SEED < 0`` draws one per run).

    The optimizer (with its momentum) and the LR scheduler are saved and restored by detectron2
    (the optimizer on 0.6 through the shim in :mod:`d2_edwpose.compat`). Checkpoints are
    written atomically, and a missing or foreign ``MODEL.WEIGHTS`` is a clear error
    (:class:`~d2_edwpose.checkpoint.SafeCheckpointer`).
    """

    def __init__(self, cfg):
        validate_edwpose_config(cfg)
        super().__init__(_with_run_seed(cfg))
        self.seed = self.cfg.SEED

    @classmethod
    def build_evaluator(cls, cfg, dataset_name, output_folder=None):
        if output_folder is None:
            output_folder = os.path.join(cfg.OUTPUT_DIR, "inference", dataset_name)
        return COCOEvaluator(
            dataset_name,
            output_dir=output_folder,
            kpt_oks_sigmas=cfg.TEST.KEYPOINT_OKS_SIGMAS,
        )

    @classmethod
    def build_train_loader(cls, cfg):
        verify_dataset_files(cfg.DATASETS.TRAIN)
        return build_resumable_train_loader(cfg)

    @classmethod
    def build_test_loader(cls, cfg, dataset_name):
        verify_dataset_files([dataset_name])
        return build_detection_test_loader(
            cfg, dataset_name, mapper=ReportingMapper(DatasetMapper(cfg, False))
        )

    def build_hooks(self):
        # DefaultTrainer.__init__ creates a DetectionCheckpointer just before calling this;
        # the PeriodicCheckpointer built below must save with the atomic one instead.
        self.checkpointer = SafeCheckpointer(
            self.checkpointer.model, self.cfg.OUTPUT_DIR, trainer=weakref.proxy(self)
        )
        return super().build_hooks()

    def resume_or_load(self, resume=True):
        super().resume_or_load(resume=resume)
        # The loader has not produced a batch yet: start it at the iteration to run next, with
        # the seed of the run being resumed.
        self.data_loader.seek(self.start_iter, seed=self.seed)

    def run_step(self):
        # RPN and RoI sampling draw from the global RNGs (see the class docstring).
        seed_process_rngs(derive_seed(self.seed, MODEL_STREAM, self.iter, comm.get_rank()))
        super().run_step()

    def state_dict(self):
        ret = super().state_dict()
        ret["seed"] = self.seed
        return ret

    def load_state_dict(self, state_dict):
        super().load_state_dict(state_dict)
        if "seed" not in state_dict:
            logger.warning(
                "The checkpoint has no seed (it was not written by d2_edwpose's Trainer): the "
                "resumed run's data order and sampling differ from the interrupted run's."
            )
            return
        if state_dict["seed"] != self.seed:
            logger.info(f"Resuming with the seed of the checkpoint: {state_dict['seed']}.")
        self.seed = state_dict["seed"]
