"""The package's structure: its import contracts, a new backbone that needs no edit of the
project, and every check of a config or a dataset running once on a path."""
import collections
import subprocess
import sys

import pytest
import torch
from torch import nn

from detectron2.layers import ShapeSpec
from detectron2.modeling import BACKBONE_REGISTRY, Backbone, build_model
from detectron2.utils.events import EventStorage

from conftest import DEMO_CONFIG, REPO_ROOT, user_cfg
from d2_edwpose.data import image_scan
from d2_edwpose.data.synthetic import register_synthetic_keypoints
from d2_edwpose.engine import Trainer, trainer
from d2_edwpose.utils import validation


def test_the_import_contracts_hold():
    # .importlinter: the layers (tools > engine, export > modeling > model_zoo > data > config
    # > utils, deploy, compat) and a runner free of PyTorch and detectron2. In a process of its
    # own: import-linter configures the logging of the process it runs in.
    lint = subprocess.run(
        [sys.executable, "-c", "import sys; from importlinter.cli import lint_imports_command; "
         "sys.exit(lint_imports_command())", str(REPO_ROOT / ".importlinter"),
         "--no-cache"],
        capture_output=True, text=True, cwd=REPO_ROOT, timeout=300,
    )  # fmt: skip
    assert lint.returncode == 0, lint.stdout + lint.stderr
    assert "Contracts: 2 kept, 0 broken." in lint.stdout


@BACKBONE_REGISTRY.register()
class TinyTestBackbone(Backbone):
    """A backbone registered by this file alone: the feature maps the config's RPN and RoI
    heads read, at FPN's strides (p<k>: 2^k), from one strided conv and average pooling."""

    def __init__(self, cfg, input_shape: ShapeSpec):
        super().__init__()
        names = sorted(set(cfg.MODEL.RPN.IN_FEATURES) | set(cfg.MODEL.ROI_HEADS.IN_FEATURES))
        channels = cfg.MODEL.FPN.OUT_CHANNELS
        self._out_features = names
        self._out_feature_strides = {name: 2 ** int(name[1:]) for name in names}
        self._out_feature_channels = {name: channels for name in names}
        self.stem = nn.Conv2d(input_shape.channels, channels, 3, stride=4, padding=1)

    def forward(self, x):
        x = torch.relu(self.stem(x))
        return {
            name: nn.functional.avg_pool2d(x, stride // 4) if stride > 4 else x
            for name, stride in self._out_feature_strides.items()
        }


def _train_cfg(tmp_path, *opts):
    return user_cfg(
        DEMO_CONFIG,
        "DATASETS.TEST", "()", "SOLVER.IMS_PER_BATCH", 2, "SOLVER.MAX_ITER", 1,
        "SOLVER.WARMUP_ITERS", 0, "DATALOADER.NUM_WORKERS", 0, "SEED", 0,
        "OUTPUT_DIR", str(tmp_path), *opts,
    )  # fmt: skip


def test_a_backbone_registered_outside_the_project_trains(
    synthetic_root, restore_synthetic_registration, tmp_path
):
    register_synthetic_keypoints(synthetic_root)
    cfg = _train_cfg(tmp_path, "MODEL.BACKBONE.NAME", "TinyTestBackbone")
    trainer = Trainer(cfg)
    assert type(trainer.model.backbone) is TinyTestBackbone
    before = trainer.model.backbone.stem.weight.detach().clone()
    trainer.resume_or_load(resume=False)
    trainer.train()
    assert trainer.iter == trainer.max_iter == 1
    losses = trainer.storage.history("total_loss").values()
    assert len(losses) == 1 and torch.isfinite(torch.tensor(losses[0][0]))
    assert not torch.equal(trainer.model.backbone.stem.weight, before)  # it learned


@pytest.fixture
def checked_keys(monkeypatch):
    """The config keys checked, counted: ``check_config_value`` patched in every module of the
    package that imported it."""
    counts = collections.Counter()
    original = validation.check_config_value

    def counting(key, value, valid, expected):
        counts[key] += 1
        return original(key, value, valid, expected)

    for module in list(sys.modules.values()):
        if vars(module).get("check_config_value") is original:
            monkeypatch.setattr(module, "check_config_value", counting)
    return counts


def test_every_key_of_the_model_is_checked_once_when_it_is_built(checked_keys):
    build_model(user_cfg(DEMO_CONFIG, "MODEL.DEVICE", "cpu"))
    assert checked_keys and set(checked_keys.values()) == {1}, checked_keys
    assert {
        "INPUT.FIXED_SIZE",
        "MODEL.MOBILENETV3.ARCH",
        "MODEL.BACKBONE.FREEZE_AT",
        "MODEL.FPN.IN_FEATURES",
        "MODEL.ROI_KEYPOINT_HEAD.CONV_TYPE",
        "MODEL.ROI_KEYPOINT_HEAD.EXPAND_FACTOR",
    } <= set(checked_keys)


def test_the_datasets_are_checked_once_before_training(
    synthetic_root, restore_synthetic_registration, tmp_path, monkeypatch, checked_keys
):
    register_synthetic_keypoints(synthetic_root)
    calls = collections.Counter()
    for name in ("verify_dataset_files", "check_registered", "check_keypoint_datasets"):
        original = getattr(trainer, name)

        def counting(*args, _original=original, _name=name, **kwargs):
            calls[_name] += 1
            return _original(*args, **kwargs)

        monkeypatch.setattr(trainer, name, counting)
    cfg = _train_cfg(tmp_path, "DATASETS.TEST", "('synthetic_keypoints_val',)")
    built = Trainer(cfg)
    with EventStorage():
        next(iter(built.data_loader))
    assert calls == {"verify_dataset_files": 1, "check_registered": 1, "check_keypoint_datasets": 1}
    assert set(checked_keys.values()) == {1}, checked_keys


def test_every_image_is_read_once_before_training_and_evaluation(
    synthetic_root, restore_synthetic_registration, tmp_path, monkeypatch
):
    # The training set is scanned by its loader, the test set before training (so that the
    # evaluation at the end of the schedule cannot fail on it) and again by its test loader,
    # which then reads the verdicts of the cache: no image is read twice.
    register_synthetic_keypoints(synthetic_root)
    reads = collections.Counter()
    original = image_scan._scan_file

    def counting(path, *args):
        reads[path] += 1
        return original(path, *args)

    monkeypatch.setattr(image_scan, "_scan_file", counting)
    cfg = _train_cfg(
        tmp_path, "DATASETS.TEST", "('synthetic_keypoints_val',)",
        "DATASETS.IMAGE_SCAN.CACHE_DIR", str(tmp_path / "scan_cache"),
    )  # fmt: skip
    built = Trainer(cfg)
    with EventStorage():
        next(iter(built.data_loader))
    Trainer.build_test_loader(cfg, "synthetic_keypoints_val")
    assert len(reads) == 24 + 20 and set(reads.values()) == {1}, reads
