"""The configs by name (d2_edwpose.model_zoo), in the checkout and in a non-editable install."""
import json
import os
import shutil
import subprocess
import sys

import pytest

from detectron2.data import DatasetCatalog

from d2_edwpose import model_zoo

from conftest import REPO_ROOT, write_config

SHIPPED = sorted(path.stem for path in (REPO_ROOT / "configs").glob("*.yaml"))


def test_every_config_of_the_checkout_is_listed_and_found_with_or_without_yaml():
    assert len(SHIPPED) == 7 and model_zoo.list_configs() == SHIPPED
    for name in SHIPPED:
        path = model_zoo.get_config_file(name)
        assert path == model_zoo.get_config_file(f"{name}.yaml")
        assert os.path.samefile(path, REPO_ROOT / "configs" / f"{name}.yaml")


def test_an_unknown_name_is_named_with_the_available_ones():
    for name in (
        "keypoint_rcnn_mv3_fpn_320_edx.yaml",
        "../model_zoo/configs/Base-Keypoint-RCNN-MobileNetV3-FPN",
    ):
        with pytest.raises(
            RuntimeError, match=r"'.*' is not a d2_edwpose config; available: .*_edw"
        ):
            model_zoo.get_config_file(name)


def test_get_config_merges_the_file_and_its_bases_over_the_defaults():
    cfg = model_zoo.get_config("cpu_demo_keypoint_rcnn_mv3_fpn_320_edw")
    assert cfg.MODEL.ROI_KEYPOINT_HEAD.CONV_TYPE == "edw"  # keypoint_rcnn_mv3_fpn_320_edw.yaml
    assert cfg.MODEL.META_ARCHITECTURE == "FixedInputSizeRCNN"  # the base
    assert cfg.MODEL.DEVICE == "cpu" and cfg.MODEL.WEIGHTS == ""  # the file itself


def test_load_config_merges_the_overrides_and_registers_the_datasets(
    tmp_path, unregister_test_datasets
):
    files = {"JSON_FILE": str(tmp_path / "mine.json"), "IMAGE_ROOT": str(tmp_path)}
    config = write_config(tmp_path / "config.yaml", {"mine": files}, ["mine"], [])
    model_zoo.load_config(config, register_datasets=False)
    assert "mine" not in DatasetCatalog.list()
    cfg = model_zoo.load_config(config, ["OUTPUT_DIR", str(tmp_path)])
    assert cfg.OUTPUT_DIR == str(tmp_path) and cfg.DATASETS.TRAIN == ("mine",)
    assert "mine" in DatasetCatalog.list()
    assert model_zoo.load_config().MODEL.ROI_KEYPOINT_HEAD.CONV_TYPE == "vanilla"  # defaults


# Run outside the checkout, with only the installed copy importable.
_INSTALLED_CHECK = """
import json, sys
import d2_edwpose
from d2_edwpose import model_zoo
cfg = model_zoo.get_config("cpu_demo_keypoint_rcnn_mv3_fpn_320_edw.yaml")
print(json.dumps({
    "package": d2_edwpose.__file__,
    "compat": sys.modules["d2_edwpose.compat"].__file__,
    "config_file": model_zoo.get_config_file("keypoint_rcnn_mv3_fpn_320_edw"),
    "configs": model_zoo.list_configs(),
    "keypoint_head": cfg.MODEL.ROI_KEYPOINT_HEAD.NAME,
    "conv_type": cfg.MODEL.ROI_KEYPOINT_HEAD.CONV_TYPE,
}))
"""


def test_a_non_editable_install_ships_the_configs(tmp_path):
    # Built from a copy, so that the build leaves nothing in the checkout.
    source = tmp_path / "source"
    shutil.copytree(
        REPO_ROOT / "d2_edwpose",
        source / "d2_edwpose",
        ignore=shutil.ignore_patterns("__pycache__"),
    )
    shutil.copy(REPO_ROOT / "setup.py", source)
    target = tmp_path / "site"
    subprocess.run(
        [sys.executable, "-m", "pip", "install", "--quiet", "--no-deps", "--no-build-isolation",
         "--no-index", "--target", str(target), str(source)],
        check=True, capture_output=True,
    )  # fmt: skip
    shutil.rmtree(source)
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    env = {**os.environ, "PYTHONPATH": str(target)}
    result = subprocess.run(
        [sys.executable, "-c", _INSTALLED_CHECK],
        cwd=elsewhere,
        env=env,
        capture_output=True,
        text=True,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    found = json.loads(result.stdout.splitlines()[-1])
    for key in ("package", "compat", "config_file"):
        assert found[key].startswith(str(target)), found
    assert found["config_file"].endswith("keypoint_rcnn_mv3_fpn_320_edw.yaml")
    assert found["configs"] == SHIPPED
    assert found["keypoint_head"] == "KRCNNConfigurableConvDeconvUpsampleHead"
    assert found["conv_type"] == "edw"
