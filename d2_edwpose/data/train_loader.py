"""A training data loader that a resumed run continues exactly where the killed one stopped.

detectron2's ``build_detection_train_loader`` cannot: its ``TrainingSampler`` starts its
stream from the beginning whenever a process starts, augmentations draw from the RNG state of
whichever process maps a sample, and aspect-ratio grouping keeps a buffer that is lost on a
restart. Here:

* the sample stream is an endless sequence of seeded shuffles of the dataset, as in
  ``TrainingSampler``; sample ``p`` of the stream is a function of ``(seed, p)`` alone, and
  rank ``r`` of ``W`` takes samples ``r, r + W, r + 2W, ...`` (``TrainingSampler``'s
  sharding), so iteration ``i`` uses the global samples ``[i * IMS_PER_BATCH,
  (i + 1) * IMS_PER_BATCH)`` whatever the number of processes;
* each sample is mapped (read, augmented) with Python's, NumPy's and torch's RNGs seeded from
  ``(seed, p)``, so a random flip is the same in any process, worker or restart;
* batches are whole per-iteration lists handed to ``DataLoader`` workers in turn and returned
  in order, so ``DATALOADER.NUM_WORKERS`` changes nothing but speed;
* :meth:`ResumableTrainLoader.seek` sets the iteration to start from before the first batch
  is drawn; the loader builds nothing until then.

There is no aspect-ratio grouping: every image is resized to ``INPUT.FIXED_SIZE`` inside the
model (``FixedInputSizeRCNN``), so batches never mix shapes and grouping would gain nothing.
"""
import contextlib
import itertools
import logging
import random

import numpy as np
import torch

from detectron2.data import DatasetMapper, get_detection_dataset_dicts
from detectron2.data.build import trivial_batch_collator
from detectron2.data.common import DatasetFromList
from detectron2.utils import comm

from .catalog import check_num_classes, num_keypoints
from .checks import ReportingMapper, check_annotations
from .image_scan import ImageScan

__all__ = [
    "ResumableTrainLoader",
    "ResumableTrainingSampler",
    "build_resumable_train_loader",
    "derive_seed",
    "seed_process_rngs",
]

logger = logging.getLogger(__name__)

# Independent random streams derived from one run seed.
ORDER_STREAM = 0  # the shuffles of the dataset
AUGMENTATION_STREAM = 1  # per-sample augmentation
MODEL_STREAM = 2  # per-iteration randomness of the model (see Trainer.run_step)
LOADER_STREAM = 3  # torch DataLoader's base seed
PRECISE_BN_STREAM = 4  # the batches of the PreciseBN hook (see d2_edwpose.engine)


def derive_seed(*entropy):
    """A 32-bit seed determined by the non-negative integers ``entropy`` and nothing else.

    NumPy's ``SeedSequence`` hashes them, so nearby inputs (iterations 5 and 6) give unrelated
    seeds.
    """
    return int(np.random.SeedSequence([int(e) for e in entropy]).generate_state(1)[0])


def seed_process_rngs(seed):
    """Seed Python's, NumPy's and torch's global RNGs (torch: CPU and every CUDA device)."""
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


@contextlib.contextmanager
def _seeded_cpu_rngs(seed):
    """Seed Python's, NumPy's and torch's CPU RNGs for the block; restore them after it, so
    that mapping samples in the main process (NUM_WORKERS=0) leaves the model's RNGs alone."""
    python_state, numpy_state = random.getstate(), np.random.get_state()
    with torch.random.fork_rng(devices=[]):
        random.seed(seed)
        np.random.seed(seed)
        torch.default_generator.manual_seed(seed)
        try:
            yield
        finally:
            random.setstate(python_state)
            np.random.set_state(numpy_state)


class ResumableTrainingSampler:
    """Batches of ``(stream position, dataset index)`` for one rank, iteration after iteration,
    starting at any iteration. See the module docstring for the stream and its sharding.

    Used as the ``batch_sampler`` of a ``torch.utils.data.DataLoader``.
    """

    def __init__(self, size, batch_size, *, seed, start_iter=0, rank=None, world_size=None):
        """
        Args:
            size (int): number of samples in the dataset.
            batch_size (int): samples per iteration on this rank.
            seed (int): seed of the shuffles, the same on all ranks.
            start_iter (int): the first iteration to produce a batch for.
            rank, world_size (int): this process's place in the job; default: from
                ``detectron2.utils.comm``.
        """
        if size <= 0:
            raise ValueError(f"Cannot train on an empty dataset (size={size})")
        self.size = size
        self.batch_size = batch_size
        self.seed = seed
        self.start_iter = start_iter
        self.rank = comm.get_rank() if rank is None else rank
        self.world_size = comm.get_world_size() if world_size is None else world_size

    def positions(self, iteration):
        """Stream positions of this rank's batch at ``iteration``."""
        slots = range(iteration * self.batch_size, (iteration + 1) * self.batch_size)
        return [self.rank + slot * self.world_size for slot in slots]

    def shuffle(self, epoch):
        """The dataset indices in the order of pass ``epoch`` over the dataset."""
        generator = torch.Generator().manual_seed(derive_seed(self.seed, ORDER_STREAM, epoch))
        return torch.randperm(self.size, generator=generator).tolist()

    def __iter__(self):
        epoch, order = None, None
        for iteration in itertools.count(self.start_iter):
            batch = []
            for position in self.positions(iteration):
                if position // self.size != epoch:
                    epoch = position // self.size
                    order = self.shuffle(epoch)
                batch.append((position, order[position % self.size]))
            yield batch


class _SeededMapDataset(torch.utils.data.Dataset):
    """Maps ``dataset[index]`` with the RNGs seeded from the sample's stream position."""

    def __init__(self, dataset, mapper, seed):
        self.dataset = dataset
        self.mapper = mapper
        self.seed = seed

    def __len__(self):
        return len(self.dataset)

    def __getitem__(self, key):
        position, index = key
        with _seeded_cpu_rngs(derive_seed(self.seed, AUGMENTATION_STREAM, position)):
            return self.mapper(self.dataset[index])


class ResumableTrainLoader:
    """An endless iterable of per-rank batches (lists of mapped dataset dicts) starting at
    iteration :attr:`start_iter`: what detectron2's trainers expect of a training loader.

    Iterating builds nothing until the first batch is requested, so a trainer may take an
    iterator at construction (detectron2 0.6's ``SimpleTrainer`` does) and the loader may
    still be pointed elsewhere with :meth:`seek` until training starts.
    """

    def __init__(self, dataset, mapper, *, total_batch_size, num_workers, seed):
        """
        Args:
            dataset (list[dict]): detectron2 dataset dicts.
            mapper (callable): dataset dict -> model input dict, e.g. ``DatasetMapper``.
            total_batch_size (int): images per iteration over all ranks
                (``SOLVER.IMS_PER_BATCH``).
            num_workers (int): ``DataLoader`` worker processes.
            seed (int): seed of the sample order and augmentations (the run's seed).
        """
        world_size = comm.get_world_size()
        if total_batch_size <= 0 or total_batch_size % world_size:
            raise ValueError(
                f"SOLVER.IMS_PER_BATCH={total_batch_size} is invalid: expected a positive "
                f"multiple of the number of processes ({world_size})"
            )
        self.dataset = DatasetFromList(dataset, copy=False)
        self.mapper = mapper
        self.batch_size = total_batch_size // world_size
        self.num_workers = num_workers
        self.seed = seed
        self.start_iter = 0
        self._started = False

    def seek(self, start_iter, *, seed):
        """Produce batches from iteration ``start_iter`` on, with the run seed ``seed``."""
        if self._started and (start_iter, seed) != (self.start_iter, self.seed):
            raise RuntimeError(
                "ResumableTrainLoader.seek() must be called before the first batch is drawn"
            )
        self.start_iter, self.seed = start_iter, seed

    def __iter__(self):
        self._started = True
        yield from self.batches(self.start_iter, seed=self.seed)

    def batches(self, start_iter, *, seed, num_workers=None):
        """A new stream of this loader's batches from iteration ``start_iter`` on, with the
        seed ``seed``; independent of the training stream (the PreciseBN hook draws its
        batches from one). ``num_workers`` defaults to the loader's."""
        sampler = ResumableTrainingSampler(
            len(self.dataset), self.batch_size, seed=seed, start_iter=start_iter
        )
        loader = torch.utils.data.DataLoader(
            _SeededMapDataset(self.dataset, self.mapper, seed),
            batch_sampler=sampler,
            num_workers=self.num_workers if num_workers is None else num_workers,
            collate_fn=trivial_batch_collator,
            # DataLoader draws its workers' base seed from this generator, not from the
            # global RNG that the model's sampling uses.
            generator=torch.Generator().manual_seed(derive_seed(seed, LOADER_STREAM, sampler.rank)),
        )
        yield from loader


def build_resumable_train_loader(cfg, mapper=None):
    """The training loader of :class:`d2_edwpose.engine.Trainer` (see the module docstring).

    Takes the same config keys as detectron2's ``build_detection_train_loader`` with
    ``DATALOADER.SAMPLER_TRAIN: "TrainingSampler"``; ``DATALOADER.ASPECT_RATIO_GROUPING`` is
    ignored. The seed is ``cfg.SEED``, or a random one shared by all ranks if it is negative.
    The images are scanned first (``DATASETS.IMAGE_SCAN``, :class:`~.image_scan.ImageScan`).
    """
    if cfg.DATALOADER.SAMPLER_TRAIN != "TrainingSampler":
        raise ValueError(
            f"DATALOADER.SAMPLER_TRAIN={cfg.DATALOADER.SAMPLER_TRAIN!r} is not supported: "
            "d2_edwpose's resumable loader implements 'TrainingSampler' only"
        )
    if cfg.DATALOADER.ASPECT_RATIO_GROUPING:
        logger.warning(
            "DATALOADER.ASPECT_RATIO_GROUPING is ignored: every image is resized to "
            f"INPUT.FIXED_SIZE={tuple(cfg.INPUT.FIXED_SIZE)} by the model, so there is "
            "nothing to group."
        )
    dataset = get_detection_dataset_dicts(
        cfg.DATASETS.TRAIN,
        filter_empty=cfg.DATALOADER.FILTER_EMPTY_ANNOTATIONS,
        min_keypoints=cfg.MODEL.ROI_KEYPOINT_HEAD.MIN_KEYPOINTS_PER_IMAGE
        if cfg.MODEL.KEYPOINT_ON
        else 0,
        proposal_files=cfg.DATASETS.PROPOSAL_FILES_TRAIN if cfg.MODEL.LOAD_PROPOSALS else None,
    )
    check_num_classes(cfg, cfg.DATASETS.TRAIN)
    dataset = ImageScan.from_config(cfg)(dataset, cfg.DATASETS.TRAIN)
    check_annotations(
        dataset,
        cfg.DATASETS.TRAIN,
        num_keypoints(cfg) if cfg.MODEL.KEYPOINT_ON else None,
    )
    return ResumableTrainLoader(
        dataset,
        ReportingMapper(DatasetMapper(cfg, True) if mapper is None else mapper),
        total_batch_size=cfg.SOLVER.IMS_PER_BATCH,
        num_workers=cfg.DATALOADER.NUM_WORKERS,
        seed=cfg.SEED if cfg.SEED >= 0 else comm.shared_random_seed(),
    )
