"""The trainer used by train_net.py and the CPU demo."""
import os

from detectron2.engine import DefaultTrainer
from detectron2.evaluation import COCOEvaluator

from .data.catalog import verify_dataset_files

__all__ = ["Trainer"]


class Trainer(DefaultTrainer):
    """detectron2's DefaultTrainer with COCO keypoint evaluation and early dataset checks."""

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
        return super().build_train_loader(cfg)

    @classmethod
    def build_test_loader(cls, cfg, dataset_name):
        verify_dataset_files([dataset_name])
        return super().build_test_loader(cfg, dataset_name)
