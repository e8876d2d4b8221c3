"""Training and evaluation: the trainer, its checkpointer and its evaluator."""

from .checkpoint import AtomicValidatingCheckpointer
from .evaluation import KeypointCOCOEvaluator
from .trainer import PreciseBN, Trainer, build_predictor, check_datasets

__all__ = [
    "AtomicValidatingCheckpointer",
    "KeypointCOCOEvaluator",
    "PreciseBN",
    "Trainer",
    "build_predictor",
    "check_datasets",
]
