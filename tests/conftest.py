"""Shared pytest set-up: markers, paths, small config helpers, and the briefly trained model
of the deployment and video tests."""
import json
import os
from pathlib import Path

import pytest

from detectron2.data import DatasetCatalog, MetadataCatalog
from detectron2.data.datasets import register_coco_instances
from detectron2.data.datasets.builtin_meta import _get_builtin_metadata

from d2_edwpose.data.synthetic import (
    default_root,
    generate_synthetic_keypoints,
    register_synthetic_keypoints,
)
from d2_edwpose.engine import Trainer
from d2_edwpose.model_zoo import load_config

REPO_ROOT = Path(__file__).resolve().parent.parent
DEMO_CONFIG = REPO_ROOT / "configs" / "cpu_demo_keypoint_rcnn_mv3_fpn_320_edw.yaml"
# CI clones the repository next to a `shared/` folder; a user's clone has none.
COCO_MINI_ROOT = Path(
    os.environ.get(
        "D2_EDWPOSE_COCO_MINI", REPO_ROOT.parent / "shared" / "data" / "coco_val2017_mini"
    )
)


def pytest_configure(config):
    config.addinivalue_line(
        "markers", "slow: end-to-end checks of several minutes, run by `make test-all`"
    )


@pytest.fixture
def restore_synthetic_registration():
    """For tests that point the synthetic dataset names elsewhere: restores the default."""
    yield
    register_synthetic_keypoints(default_root())


@pytest.fixture(scope="session")
def coco_mini_root():
    if not (COCO_MINI_ROOT / "person_keypoints_val2017_mini.json").is_file():
        pytest.skip(
            f"real-data check: {COCO_MINI_ROOT} (4 COCO val2017 images, found beside the "
            "repository in CI as ../shared/data/coco_val2017_mini) is absent; set "
            "D2_EDWPOSE_COCO_MINI to such a folder to run it"
        )
    return COCO_MINI_ROOT


@pytest.fixture(scope="session")
def coco_mini_dataset(coco_mini_root):
    """The real COCO file registered in detectron2's catalog, as a COCO keypoints split."""
    name = "d2_edwpose_test_coco_val2017_mini"
    register_coco_instances(
        name,
        _get_builtin_metadata("coco_person"),
        str(coco_mini_root / "person_keypoints_val2017_mini.json"),
        str(coco_mini_root / "val2017"),
    )
    return name


@pytest.fixture
def unregister_test_datasets():
    """For tests that register datasets: removes them afterwards (the catalogs are global)."""
    before = set(DatasetCatalog.list())
    yield
    for name in set(DatasetCatalog.list()) - before:
        DatasetCatalog.remove(name)
        MetadataCatalog.remove(name)


def write_config(path, datasets, train, test, **sections):
    """A user's config: the CPU demo config, their datasets (DATASETS.COCO_KEYPOINTS) and
    ``sections`` (name -> dict of keys) merged in."""
    config = {
        "_BASE_": str(DEMO_CONFIG),
        "DATASETS": {"COCO_KEYPOINTS": datasets, "TRAIN": list(train), "TEST": list(test)},
        **sections,
    }
    path.write_text(json.dumps(config))  # JSON is YAML
    return path


def user_cfg(config_file, *opts):
    """The config of ``config_file`` (with d2_edwpose's keys) and ``KEY VALUE`` overrides (any
    values: paths, tuples, numbers), its datasets left unregistered for the test to register."""
    return load_config(config_file, [str(o) for o in opts], register_datasets=False)


def demo_cfg(*opts):
    """The CPU demo config with ``KEY VALUE`` overrides, as :func:`user_cfg`."""
    return user_cfg(DEMO_CONFIG, *opts)


def defaults_with(section, **keys):
    """detectron2's and d2_edwpose's defaults, with ``section.KEY`` set to each of ``keys``
    (as assigned, unchecked: a bad value reaches the component that reads it), e.g.
    ``defaults_with("MODEL.ROI_BOX_HEAD", NUM_FC=1)``."""
    cfg = load_config()
    node = cfg
    for name in section.split("."):
        node = node[name]
    for key, value in keys.items():
        node[key] = value
    return cfg


def num_parameters(module):
    return sum(p.numel() for p in module.parameters())


@pytest.fixture(scope="session")
def synthetic_root(tmp_path_factory):
    """24 training and 20 validation images of synthetic people."""
    return generate_synthetic_keypoints(tmp_path_factory.mktemp("synthetic"), 24, 20, seed=0)


@pytest.fixture(scope="session")
def trained(synthetic_root, tmp_path_factory):
    """(config, model): the CPU demo config trained for 150 iterations on 24 synthetic images,
    scoring people at 0.5 and more: scores far from the threshold, unlike random weights.
    Trained once per session, for the deployment and the video tests."""
    register_synthetic_keypoints(synthetic_root)
    cfg = demo_cfg(
        "SOLVER.IMS_PER_BATCH", 4, "SOLVER.MAX_ITER", 150, "SOLVER.STEPS", (120,),
        "SOLVER.WARMUP_ITERS", 20, "DATALOADER.NUM_WORKERS", 0, "SEED", 0,
        "TEST.PRECISE_BN.NUM_ITER", 12, "MODEL.ROI_HEADS.SCORE_THRESH_TEST", 0.5,
        "OUTPUT_DIR", tmp_path_factory.mktemp("trained"),
    )  # fmt: skip
    trainer = Trainer(cfg)
    trainer.resume_or_load(resume=False)
    trainer.train()
    return cfg, trainer.model.eval()
