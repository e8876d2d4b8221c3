"""The trainer of train_net.py and the CPU demo, its PreciseBN hook, the predictor, and the
check of the datasets against the config that runs before anything is trained or evaluated."""
import logging
import os
import weakref

import torch
from fvcore.nn.precise_bn import get_bn_modules, update_bn_stats

from detectron2.data import (
    DatasetCatalog,
    DatasetMapper,
    build_detection_test_loader,
    get_detection_dataset_dicts,
)
from detectron2.engine import DefaultPredictor, DefaultTrainer, HookBase, hooks
from detectron2.utils import comm
from detectron2.utils.events import EventStorage

from ..data.catalog import (
    check_keypoint_datasets,
    check_num_classes,
    check_registered,
    num_keypoints,
    oks_sigmas,
    verify_dataset_files,
)
from ..data.checks import ReportingMapper, check_keypoint_counts
from ..data.coco_keypoints import register_config_datasets
from ..data.image_scan import ImageScan
from ..data.train_loader import (
    MODEL_STREAM,
    PRECISE_BN_STREAM,
    build_resumable_train_loader,
    derive_seed,
    seed_process_rngs,
)
from .checkpoint import AtomicValidatingCheckpointer
from .evaluation import KeypointCOCOEvaluator

__all__ = ["PreciseBN", "Trainer", "build_predictor", "check_datasets"]

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


def check_datasets(cfg, *, train):
    """Register the config's ``DATASETS.COCO_KEYPOINTS`` and check, before anything runs, what
    would otherwise fail or mislead later: the datasets are registered and their files exist,
    their keypoint sets match the config (:func:`check_keypoint_datasets`), and the test sets
    load, with ``NUM_CLASSES`` classes, ``NUM_KEYPOINTS`` keypoints per annotation
    (:func:`~d2_edwpose.data.catalog.num_keypoints`: -1 is the datasets' number) and images
    that detectron2 reads (``DATASETS.IMAGE_SCAN``), so that an evaluation at the end of a
    schedule cannot fail on them. ``train``: check ``DATASETS.TRAIN`` too (whose annotations
    and images the training loader checks as it loads them, before the first iteration)."""
    register_config_datasets(cfg)
    train_names = tuple(cfg.DATASETS.TRAIN) if train else ()
    test_names = tuple(cfg.DATASETS.TEST)
    check_registered(train_names, test_names)
    verify_dataset_files(train_names + test_names)
    check_keypoint_datasets(cfg, train_names, test_names)
    image_scan = ImageScan.from_config(cfg)
    for name in test_names:
        dataset_dicts = DatasetCatalog.get(name)
        check_num_classes(cfg, [name])
        if cfg.MODEL.KEYPOINT_ON:
            check_keypoint_counts(dataset_dicts, [name], num_keypoints(cfg))
        image_scan(dataset_dicts, [name])


class PreciseBN(HookBase):
    """detectron2's ``PreciseBN`` hook (``TEST.PRECISE_BN``) for :class:`Trainer`: at the end
    of training, and every ``TEST.EVAL_PERIOD`` iterations, it replaces the running statistics
    of the BatchNorm layers that train by their averages over ``TEST.PRECISE_BN.NUM_ITER``
    training batches with the current weights (fvcore's ``update_bn_stats``). It runs before
    the checkpoint and the evaluation of that iteration.

    Unlike detectron2's hook, it keeps a resumed run exact and its processes in agreement:

    * the update at iteration ``i`` draws its batches from the training data in an order
      seeded by (run seed, ``i``): a run resumed after a kill computes the statistics an
      uninterrupted one does (detectron2's hook reuses one iterator, which a restart rewinds,
      and builds a second copy of the training set for it);
    * the statistics are averaged over the processes (mean, and variance about the common
      mean), so that every process evaluates, and rank 0 saves, the same statistics. The
      processes weigh equally, which is exact because every input has the model's fixed size
      (``FixedInputSizeRCNN``) and every process the same number of images per batch.
    """

    def __init__(self, period, model, train_loader, num_iter):
        """
        Args:
            period (int): iterations between updates; 0: only at the end of training.
            model (nn.Module): the model in training (DDP-wrapped or not).
            train_loader (ResumableTrainLoader): the trainer's loader, for its data.
            num_iter (int): batches per update.
        """
        self._model = model
        self._train_loader = train_loader
        self._period = period
        self._num_iter = num_iter

    def after_step(self):
        next_iter = self.trainer.iter + 1
        if next_iter == self.trainer.max_iter or (
            self._period > 0 and next_iter % self._period == 0
        ):
            self.update_stats()

    def update_stats(self):
        seed = derive_seed(self.trainer.seed, PRECISE_BN_STREAM, self.trainer.iter)
        # In this process, as detectron2's hook does: starting workers for a few hundred
        # batches costs more memory and time than it saves.
        batches = self._train_loader.batches(0, seed=seed, num_workers=0)
        logger.info(f"Running PreciseBN for {self._num_iter} iterations.")
        with EventStorage():  # the model's training-mode events would be logged as training's
            update_bn_stats(self._model, batches, self._num_iter)
        world_size = comm.get_world_size()
        if world_size == 1:
            return
        for bn in get_bn_modules(self._model):
            mean, square_mean = bn.running_mean, bn.running_var + bn.running_mean.square()
            for statistic in (mean, square_mean):
                torch.distributed.all_reduce(statistic)
                statistic /= world_size
            bn.running_mean = mean
            bn.running_var = (square_mean - mean.square()).clamp_(min=0)  # rounding


def build_predictor(cfg) -> DefaultPredictor:
    """detectron2's ``DefaultPredictor(cfg)``, with ``cfg.MODEL.WEIGHTS`` loaded by
    :class:`~d2_edwpose.engine.checkpoint.AtomicValidatingCheckpointer`: a missing file, or a
    checkpoint of another architecture, is an error naming ``MODEL.WEIGHTS`` instead of a model
    that runs with the weights it could not load left random (``DefaultPredictor`` only logs
    them). The config's ``DATASETS.COCO_KEYPOINTS`` are registered first: ``NUM_KEYPOINTS``
    -1 takes the number of keypoints of its datasets."""
    register_config_datasets(cfg)
    from_scratch = cfg.clone()
    from_scratch.defrost()
    from_scratch.MODEL.WEIGHTS = ""
    predictor = DefaultPredictor(from_scratch)
    AtomicValidatingCheckpointer(predictor.model).resume_or_load(cfg.MODEL.WEIGHTS, resume=False)
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
    (:class:`~d2_edwpose.engine.checkpoint.AtomicValidatingCheckpointer`).
    """

    def __init__(self, cfg):
        check_datasets(cfg, train=True)
        super().__init__(_with_run_seed(cfg))
        self.seed = self.cfg.SEED

    @classmethod
    def build_evaluator(cls, cfg, dataset_name, output_folder=None):
        if output_folder is None:
            output_folder = os.path.join(cfg.OUTPUT_DIR, "inference", dataset_name)
        return KeypointCOCOEvaluator(
            dataset_name, output_dir=output_folder, kpt_oks_sigmas=oks_sigmas(cfg, dataset_name)
        )

    @classmethod
    def build_train_loader(cls, cfg):
        return build_resumable_train_loader(cfg)

    @classmethod
    def build_test_loader(cls, cfg, dataset_name):
        """detectron2's test loader of ``dataset_name``, over the records that the image scan
        keeps (all, unless ``DATASETS.IMAGE_SCAN.BAD_ENTRIES`` is "drop")."""
        proposal_files = (
            [cfg.DATASETS.PROPOSAL_FILES_TEST[list(cfg.DATASETS.TEST).index(dataset_name)]]
            if cfg.MODEL.LOAD_PROPOSALS
            else None
        )
        dataset = get_detection_dataset_dicts(
            [dataset_name], filter_empty=False, proposal_files=proposal_files
        )
        return build_detection_test_loader(
            ImageScan.from_config(cfg)(dataset, [dataset_name]),
            mapper=ReportingMapper(DatasetMapper(cfg, False)),
            num_workers=cfg.DATALOADER.NUM_WORKERS,
        )

    def build_hooks(self):
        # DefaultTrainer.__init__ creates a DetectionCheckpointer just before calling this;
        # the PeriodicCheckpointer built below must save with the atomic one instead.
        self.checkpointer = AtomicValidatingCheckpointer(
            self.checkpointer.model, self.cfg.OUTPUT_DIR, trainer=weakref.proxy(self)
        )
        # detectron2's own PreciseBN hook is replaced by this module's (see PreciseBN). It is
        # switched off in the config that DefaultTrainer.build_hooks reads, rather than removed
        # from its list, because building it would load and check the training set again.
        cfg = self.cfg
        self.cfg = cfg.clone()
        self.cfg.defrost()
        self.cfg.TEST.PRECISE_BN.ENABLED = False
        try:
            hook_list = super().build_hooks()
        finally:
            self.cfg = cfg
        if cfg.TEST.PRECISE_BN.ENABLED and get_bn_modules(self.model):
            if not hasattr(self.data_loader, "batches"):
                raise TypeError(
                    "TEST.PRECISE_BN.ENABLED=True needs the training loader of "
                    "build_resumable_train_loader (a ResumableTrainLoader); "
                    f"build_train_loader returned a {type(self.data_loader).__name__}"
                )
            precise_bn = PreciseBN(
                cfg.TEST.EVAL_PERIOD, self.model, self.data_loader, cfg.TEST.PRECISE_BN.NUM_ITER
            )
            # Before the checkpointer, which saves the statistics, and the evaluation.
            first_user = next(
                (
                    i
                    for i, hook in enumerate(hook_list)
                    if isinstance(hook, (hooks.PeriodicCheckpointer, hooks.EvalHook))
                ),
                len(hook_list),
            )
            hook_list.insert(first_user, precise_bn)
        return hook_list

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
