"""A user's own COCO-format data: the real COCO images, as COCO keypoints and as a 14-keypoint
CrowdPose-format set, registered from a config, trained, evaluated, drawn and exported; and
every mismatch between the config, the metadata and the annotations found before training."""

import copy
import json
import logging
import os
import re
import subprocess
import sys

import cv2
import numpy as np
import pytest
import torch

from detectron2.data import DatasetCatalog, MetadataCatalog
from detectron2.data.detection_utils import create_keypoint_hflip_indices
from detectron2.data.datasets import register_coco_instances
from detectron2.data.datasets.builtin_meta import _get_builtin_metadata
from detectron2.structures import Boxes, Instances

from d2_edwpose.data import CROWDPOSE_KEYPOINTS, register_config_datasets, register_keypoint_dataset
from d2_edwpose.data.catalog import keypoint_metadata
from d2_edwpose.data.coco_keypoints import complete_coco_annotations
from d2_edwpose.deploy.onnx_pose_runner import OnnxPoseRunner
from d2_edwpose.engine import Trainer, check_datasets
from d2_edwpose.engine.evaluation import KeypointCOCOEvaluator
from d2_edwpose.tools import demo, export_model

from conftest import DEMO_CONFIG, REPO_ROOT, user_cfg, write_config
from crowdpose_fixture import CROWDPOSE_NAMES, write_crowdpose_fixture

WITH_FAULTS = REPO_ROOT / "tests" / "train_net_with_faults.py"
COCO_JSON = "person_keypoints_val2017_mini.json"

# Each test registers its datasets; they are removed afterwards.
pytestmark = pytest.mark.usefixtures("unregister_test_datasets")


@pytest.fixture(scope="module")
def crowdpose_json(coco_mini_root, tmp_path_factory):
    return write_crowdpose_fixture(coco_mini_root, tmp_path_factory.mktemp("crowdpose"))


@pytest.fixture
def crowdpose_dataset(crowdpose_json, coco_mini_root):
    """The shortest declaration: the keypoint set comes from the file's category."""
    entry = {"JSON_FILE": str(crowdpose_json), "IMAGE_ROOT": str(coco_mini_root / "val2017")}
    return {"crowdpose_mini": entry}


# ----------------------------------------------------------------------------- training
def test_overfits_the_real_images_through_a_kill_and_resume(coco_mini_root, tmp_path):
    """The CPU demo config (BatchNorm trained from scratch, PreciseBN at the end), with the
    four real COCO images declared in the config, trained on them by train_net.py, killed after
    a mid-schedule checkpoint, resumed, and evaluated on them by COCOEvaluator: it finds the
    people. With torchvision's BatchNorm momentum (0.01) and no PreciseBN, the same run
    detected nobody: its running statistics still described the first iterations' weights
    (docs/training.md, "BatchNorm")."""
    datasets = {
        "coco_mini": {
            "JSON_FILE": str(coco_mini_root / COCO_JSON),
            "IMAGE_ROOT": str(coco_mini_root / "val2017"),
        }
    }
    config = write_config(
        tmp_path / "coco_mini.yaml", datasets, ["coco_mini"], ["coco_mini"],
        SOLVER={"MAX_ITER": 160, "STEPS": [110, 140], "WARMUP_ITERS": 50, "CHECKPOINT_PERIOD": 80},
        DATALOADER={"NUM_WORKERS": 0}, SEED=1, OUTPUT_DIR=str(tmp_path / "run"),
    )  # fmt: skip
    command = [sys.executable, str(WITH_FAULTS), "--config-file", str(config)]
    killed = subprocess.run(
        command, capture_output=True, text=True, cwd=tmp_path, timeout=600,
        env={**os.environ, "D2_EDWPOSE_TEST_KILL_AFTER_ITER": "79"},
    )  # fmt: skip
    assert killed.returncode == -9, killed.stderr[-3000:]
    assert (tmp_path / "run" / "last_checkpoint").read_text() == "model_0000079.pth"
    resumed = subprocess.run(
        [*command, "--resume"], capture_output=True, text=True, cwd=tmp_path, timeout=600
    )
    log = resumed.stdout + resumed.stderr
    assert resumed.returncode == 0, log[-3000:]
    assert "Starting training from iteration 80" in log
    assert "Running PreciseBN for 100 iterations" in log
    records = [
        json.loads(line) for line in (tmp_path / "run" / "metrics.json").read_text().splitlines()
    ]
    (results,) = [r for r in records if "keypoints/AP" in r]  # the final evaluation's
    assert results["keypoints/AP"] >= 50, results
    assert results["bbox/AP"] >= 50, results


def test_fourteen_keypoints_train_evaluate_draw_and_export(
    crowdpose_dataset, coco_mini_root, tmp_path, caplog
):
    """The CrowdPose-format fixture (14 keypoints, no ``area``), declared in a config by its
    files alone (no keypoint set, no NUM_KEYPOINTS): a few training iterations, COCOEvaluator
    with CrowdPose's sigmas, the demo's drawing metadata, and ONNX and TorchScript exports
    whose runner returns 14 named keypoints per person."""
    config = write_config(
        tmp_path / "crowdpose.yaml", crowdpose_dataset, ["crowdpose_mini"], ["crowdpose_mini"],
        OUTPUT_DIR=str(tmp_path / "run"),
        SOLVER={"IMS_PER_BATCH": 2, "MAX_ITER": 3, "WARMUP_ITERS": 1, "STEPS": [2]},
        DATALOADER={"NUM_WORKERS": 0}, TEST={"EVAL_PERIOD": 0, "PRECISE_BN": {"NUM_ITER": 2}},
        SEED=0,
    )  # fmt: skip
    cfg = user_cfg(config)
    with caplog.at_level(logging.WARNING, logger="d2_edwpose.data.coco_keypoints"):
        trainer = Trainer(cfg)
    (warning,) = [r.getMessage() for r in caplog.records]  # once, though loaded twice
    assert "Dataset 'crowdpose_mini'" in warning and "14 annotations have no 'area'" in warning
    metadata = MetadataCatalog.get("crowdpose_mini")
    assert metadata.keypoint_oks_sigmas == list(CROWDPOSE_KEYPOINTS["oks_sigmas"])
    trainer.resume_or_load(resume=False)
    trainer.train()
    (batch,) = [next(iter(trainer.data_loader))]
    assert batch[0]["instances"].gt_keypoints.tensor.shape[1:] == (14, 3)
    # PreciseBN ran before the final checkpoint: it holds the statistics the model evaluates with.
    saved = torch.load(tmp_path / "run" / "model_final.pth", weights_only=False)["model"]
    statistics = {k: v for k, v in trainer.model.state_dict().items() if k.endswith("running_var")}
    assert statistics and all(torch.equal(saved[k], v) for k, v in statistics.items())

    evaluator = Trainer.build_evaluator(cfg, "crowdpose_mini")
    assert isinstance(evaluator, KeypointCOCOEvaluator)
    assert evaluator._kpt_oks_sigmas == list(CROWDPOSE_KEYPOINTS["oks_sigmas"])
    model = trainer.model.eval()
    with torch.no_grad():
        (output,) = model([{"image": torch.zeros(3, 64, 64, dtype=torch.uint8)}])
    assert output["instances"].pred_keypoints.shape[1:] == (14, 3)
    # Scored with the 14 sigmas on ground truth without 'area' (pycocotools: KeyError before).
    results = Trainer.test(cfg, model)  # detectron2 unwraps the results of a single dataset
    assert set(results) == {"bbox", "keypoints"}

    metadata = keypoint_metadata(user_cfg(config))
    assert list(metadata.keypoint_names) == list(CROWDPOSE_NAMES)
    assert ("head", "neck", (102, 0, 204)) in metadata.keypoint_connection_rules
    weights = tmp_path / "run" / "model_final.pth"
    image = coco_mini_root / "val2017" / "000000000785.jpg"
    demo.main(
        ["--config-file", str(config), "--input", str(image), "--output", str(tmp_path / "drawn"),
         "--confidence-threshold", "0", "MODEL.WEIGHTS", str(weights)]
    )  # fmt: skip
    drawn = cv2.imread(str(tmp_path / "drawn" / image.name))
    assert drawn is not None and drawn.shape == cv2.imread(str(image)).shape

    written = export_model.main(
        ["--config-file", str(config), "--output", str(tmp_path / "export"), "--verify", str(image),
         "MODEL.WEIGHTS", str(weights), "MODEL.ROI_HEADS.SCORE_THRESH_TEST", "0.0"]
    )  # fmt: skip
    runner = OnnxPoseRunner(written["onnx"])
    assert runner.keypoint_names == list(CROWDPOSE_NAMES)
    poses = runner(cv2.imread(str(image)))
    assert len(poses["boxes"]) > 0 and poses["keypoints"].shape == (len(poses["boxes"]), 14, 3)
    module = torch.jit.load(str(written["torchscript"]))
    _, _, _, keypoints = module(torch.zeros(3, 320, 320))
    assert keypoints.shape[1:] == (14, 3)


# ----------------------------------------------------------------------------- checks
def _crowdpose_cfg(tmp_path, crowdpose_dataset, *opts):
    config = write_config(
        tmp_path / "crowdpose.yaml", crowdpose_dataset, ["crowdpose_mini"], ["crowdpose_mini"],
        MODEL={"ROI_KEYPOINT_HEAD": {"NUM_KEYPOINTS": 14}}, OUTPUT_DIR=str(tmp_path / "run"),
    )  # fmt: skip
    return user_cfg(config, *opts)


@pytest.mark.parametrize(
    "opts, message",
    [
        (
            ["MODEL.ROI_KEYPOINT_HEAD.NUM_KEYPOINTS", 17],
            "MODEL.ROI_KEYPOINT_HEAD.NUM_KEYPOINTS=17 does not match dataset 'crowdpose_mini'",
        ),
        (
            [
                "TEST.KEYPOINT_OKS_SIGMAS",
                [
                    0.026,
                    0.025,
                    0.025,
                    0.035,
                    0.035,
                    0.079,
                    0.079,
                    0.072,
                    0.072,
                    0.062,
                    0.062,
                    0.107,
                    0.107,
                    0.087,
                    0.087,
                    0.089,
                    0.089,
                ],
            ],
            "TEST.KEYPOINT_OKS_SIGMAS has 17 values, but dataset 'crowdpose_mini' has 14 keypoints",
        ),
        (
            ["TEST.KEYPOINT_OKS_SIGMAS", [0.05] * 14],
            "differs from the OKS sigmas of dataset 'crowdpose_mini'",
        ),
    ],
)
def test_config_mismatches_stop_before_training_and_evaluation(
    crowdpose_dataset, tmp_path, opts, message, monkeypatch
):
    cfg = _crowdpose_cfg(tmp_path, crowdpose_dataset, *opts)
    built = []
    monkeypatch.setattr(Trainer, "build_model", classmethod(lambda cls, cfg: built.append(cfg)))
    with pytest.raises(ValueError, match=re.escape(message)):
        Trainer(cfg)
    with pytest.raises(ValueError, match=re.escape(message)):
        check_datasets(cfg, train=False)  # what train_net.py --eval-only checks first
    assert not built, "the checks must run before the model is built"


def test_eval_only_checks_the_test_set_before_building_the_model(crowdpose_dataset, tmp_path):
    config = write_config(
        tmp_path / "crowdpose.yaml", crowdpose_dataset, [], ["crowdpose_mini"],
        MODEL={"ROI_KEYPOINT_HEAD": {"NUM_KEYPOINTS": 17}}, OUTPUT_DIR=str(tmp_path / "run"),
    )  # fmt: skip
    result = subprocess.run(
        [sys.executable, str(REPO_ROOT / "train_net.py"), "--config-file", str(config),
         "--eval-only", "MODEL.WEIGHTS", str(tmp_path / "never_read.pth")],
        capture_output=True, text=True, cwd=tmp_path, timeout=600,
    )  # fmt: skip
    assert result.returncode != 0
    message = result.stderr.strip().splitlines()[-1]
    assert message.startswith(
        "ValueError: MODEL.ROI_KEYPOINT_HEAD.NUM_KEYPOINTS=17 does not match dataset "
        "'crowdpose_mini' (DATASETS.TEST), which has 14 keypoints"
    ), message


def _write_json(tmp_path, coco, name="broken.json"):
    path = tmp_path / name
    path.write_text(json.dumps(coco))
    return path


def _broken(crowdpose_json, change):
    coco = json.loads(crowdpose_json.read_text())
    change(coco)
    return coco


@pytest.mark.parametrize(
    "change, message",
    [
        (
            lambda c: c["annotations"][3].__setitem__("keypoints", [0] * 51),
            r"annotations\[3\] \(id 1202706\) has 51 keypoint values; the dataset's 14 keypoints",
        ),
        (lambda c: c["images"][1].pop("height"), r"images\[1\] has no \['height'\]"),
        (
            lambda c: c["annotations"][0].__setitem__("image_id", 12345),
            r"image_id 12345 is not the id of an image",
        ),
        (
            lambda c: c["annotations"][0].__setitem__("category_id", 2),
            r"category_id 2 is not the id of a category",
        ),
        (
            lambda c: c["annotations"][1].__setitem__("id", c["annotations"][0]["id"]),
            "appears twice",
        ),
        (
            lambda c: c["annotations"][2].pop("keypoints"),
            r"annotations\[2\] \(id 230195\) has no \['keypoints'\]",
        ),
        (
            lambda c: c["annotations"][0].__setitem__("id", 0),
            "annotation ids must be positive integers",
        ),
        (
            lambda c: c["annotations"][0].update(iscrowd=1, keypoints=None)
            or c["annotations"][0].pop("keypoints"),
            r"annotations\[0\] \(id 442619\) has no \['keypoints'\].*\(a person or crowd without labelled",
        ),
        (lambda c: c["images"][0].__setitem__("width", 640.0), "must be positive integers"),
        (
            lambda c: c["categories"][0].__setitem__("keypoints", list(reversed(CROWDPOSE_NAMES))),
            "category 'person' names the keypoints",
        ),
    ],
)
def test_file_problems_name_the_file_and_record_before_training(
    crowdpose_json, coco_mini_root, tmp_path, change, message
):
    path = _write_json(tmp_path, _broken(crowdpose_json, change))
    name = f"broken_{abs(hash(message))}"
    register_keypoint_dataset(name, path, coco_mini_root / "val2017", **CROWDPOSE_KEYPOINTS)
    cfg = user_cfg(
        DEMO_CONFIG,
        "DATASETS.TRAIN",
        (name,),
        "DATASETS.TEST",
        (),
        "MODEL.ROI_KEYPOINT_HEAD.NUM_KEYPOINTS",
        14,
        "OUTPUT_DIR",
        str(tmp_path / "run"),
    )
    with pytest.raises(ValueError, match=message) as error:
        Trainer(cfg)
    assert f"Dataset '{name}'" in str(error.value) and str(path) in str(error.value)


def test_missing_fields_are_filled_once_with_one_warning_and_evaluate(
    crowdpose_json, coco_mini_root, tmp_path, caplog
):
    """No 'area' (as in CrowdPose), no 'iscrowd', no 'num_keypoints': one warning naming the
    dataset and the counts, and COCOEvaluator scores the ground truth itself at AP 100."""

    def strip(coco):
        for annotation in coco["annotations"]:
            annotation.pop("iscrowd")
            annotation.pop("num_keypoints")

    path = _write_json(tmp_path, _broken(crowdpose_json, strip), "stripped.json")
    register_keypoint_dataset(
        "stripped_mini", path, coco_mini_root / "val2017", **CROWDPOSE_KEYPOINTS
    )
    with caplog.at_level(logging.WARNING, logger="d2_edwpose.data.coco_keypoints"):
        records = DatasetCatalog.get("stripped_mini")
        assert DatasetCatalog.get("stripped_mini") == records  # checked and reported once
    (warning,) = [r.getMessage() for r in caplog.records]
    assert "Dataset 'stripped_mini'" in warning
    assert (
        "14 annotations have no 'area', 14 annotations have no 'iscrowd', 14 annotations have no 'num_keypoints'"
        in warning
    )

    evaluator = KeypointCOCOEvaluator(
        "stripped_mini", tasks=("keypoints",), distributed=False, output_dir=str(tmp_path),
        kpt_oks_sigmas=CROWDPOSE_KEYPOINTS["oks_sigmas"],
    )  # fmt: skip
    evaluator.reset()
    for record in records:
        people = [a for a in record["annotations"] if any(a["keypoints"][2::3])]
        instances = Instances((record["height"], record["width"]))
        instances.pred_boxes = Boxes(
            torch.tensor(
                [[x, y, x + w, y + h] for x, y, w, h in (a["bbox"] for a in people)]
            ).reshape(-1, 4)
        )
        instances.scores = torch.ones(len(people))
        instances.pred_classes = torch.zeros(len(people), dtype=torch.int64)
        # detectron2's loader added 0.5 to the coordinates; COCOEvaluator takes it off again.
        instances.pred_keypoints = torch.tensor(
            [a["keypoints"] for a in people], dtype=torch.float32
        ).reshape(-1, 14, 3)
        evaluator.process([{"image_id": record["image_id"]}], [{"instances": instances}])
    assert evaluator.evaluate()["keypoints"]["AP"] >= 99.0
    # The areas filled for evaluation are those of the boxes (the fixture has no segmentation).
    annotation = evaluator._coco_api.anns[460541]
    assert annotation["area"] == pytest.approx(annotation["bbox"][2] * annotation["bbox"][3])


@pytest.mark.parametrize(
    "arguments, message",
    [
        (
            dict(keypoint_flip_map=(("left_wrist", "right_hand"),)),
            r"keypoint_flip_map entry \('left_wrist', 'right_hand'\)",
        ),
        (
            dict(keypoint_flip_map=(("left_wrist", "right_wrist"), ("left_wrist", "right_knee"))),
            "each name in at most one pair",
        ),
        (dict(oks_sigmas=[0.05] * 13), "oks_sigmas has 13 values"),
        (
            dict(keypoint_connection_rules=(("head", "tail", (0, 0, 0)),)),
            r"keypoint_connection_rules entry \('head', 'tail'",
        ),
        (dict(keypoint_flip_map=None), "keypoint_flip_map is required"),
        (dict(oks_sigmas=None), "oks_sigmas is required"),
    ],
)
def test_invalid_keypoint_sets_are_refused_at_registration(arguments, message):
    with pytest.raises(ValueError, match=message):
        register_keypoint_dataset(
            "never_registered", "x.json", "images", **{**CROWDPOSE_KEYPOINTS, **arguments}
        )
    assert "never_registered" not in DatasetCatalog.list()


def test_datasets_without_keypoint_metadata_are_refused(coco_mini_root, tmp_path):
    """detectron2's register_coco_instances with no metadata: no keypoint names to match."""
    register_coco_instances(
        "bare_coco_mini", {}, str(coco_mini_root / COCO_JSON), str(coco_mini_root / "val2017")
    )
    cfg = user_cfg(
        DEMO_CONFIG,
        "DATASETS.TRAIN",
        ("bare_coco_mini",),
        "DATASETS.TEST",
        (),
        "OUTPUT_DIR",
        str(tmp_path),
    )
    with pytest.raises(
        ValueError,
        match=r"Dataset 'bare_coco_mini' \(DATASETS.TRAIN\) has no keypoint_names in its metadata",
    ):
        Trainer(cfg)


def test_config_datasets_register_once_and_refuse_a_conflicting_name(
    crowdpose_dataset, coco_mini_root, tmp_path
):
    cfg = _crowdpose_cfg(tmp_path, crowdpose_dataset)
    register_config_datasets(cfg)
    register_config_datasets(cfg)  # the same declaration again: nothing to do
    other = copy.deepcopy(crowdpose_dataset)
    other["crowdpose_mini"]["JSON_FILE"] = str(coco_mini_root / COCO_JSON)
    other["crowdpose_mini"]["KEYPOINT_SET"] = "coco_person"
    with pytest.raises(
        ValueError,
        match="DATASETS.COCO_KEYPOINTS.crowdpose_mini: dataset 'crowdpose_mini' is already registered",
    ):
        register_config_datasets(
            _crowdpose_cfg(tmp_path, other, "MODEL.ROI_KEYPOINT_HEAD.NUM_KEYPOINTS", 17)
        )
    keypoint_set = tmp_path / "hands.json"
    keypoint_set.write_text(
        json.dumps(
            {
                "keypoint_names": ["wrist", "thumb"],
                "keypoint_flip_map": [],
                "oks_sigmas": [0.05, 0.05],
            }
        )
    )
    hands = {
        "hands": {
            "JSON_FILE": "hands.json",
            "IMAGE_ROOT": "images",
            "KEYPOINT_SET": str(keypoint_set),
        }
    }
    register_config_datasets(_crowdpose_cfg(tmp_path, hands))
    assert list(MetadataCatalog.get("hands").keypoint_names) == ["wrist", "thumb"]
    keypoint_set.write_text(
        json.dumps({"keypoint_names": ["wrist", "thumb"], "keypoint_flip_map": []})
    )
    hands = {"hands2": {**hands["hands"]}}
    with pytest.raises(
        ValueError,
        match=r"hands2.KEYPOINT_SET='.*hands.json': register_keypoint_dataset\('hands2'\): oks_sigmas is required",
    ):
        register_config_datasets(_crowdpose_cfg(tmp_path, hands))
    with pytest.raises(ValueError, match=r"DATASETS.COCO_KEYPOINTS.path_only='x.json' is invalid"):
        register_config_datasets(_crowdpose_cfg(tmp_path, {"path_only": "x.json"}))
    bad = {"bad": {"JSON_FILE": "x.json", "IMAGE_ROOT": "images", "KEYPOINT_SET": "crowd_pose"}}
    with pytest.raises(
        ValueError, match=r"DATASETS.COCO_KEYPOINTS.bad.KEYPOINT_SET='crowd_pose' is invalid"
    ):
        register_config_datasets(_crowdpose_cfg(tmp_path, bad))


def test_a_test_set_with_other_keypoints_stops_training_before_it_starts(
    crowdpose_json, coco_mini_root, coco_mini_dataset, tmp_path
):
    """A test set registered with COCO's metadata but 14-keypoint annotations: the evaluation at
    the end of the schedule would fail; the trainer loads the test set first and refuses."""
    register_coco_instances(
        "mislabelled_crowdpose_mini", _get_builtin_metadata("coco_person"),
        str(crowdpose_json), str(coco_mini_root / "val2017"),
    )  # fmt: skip
    cfg = user_cfg(DEMO_CONFIG, "DATASETS.TRAIN", (coco_mini_dataset,), "DATASETS.TEST",
                   ("mislabelled_crowdpose_mini",), "OUTPUT_DIR", str(tmp_path))  # fmt: skip
    for check in (lambda: Trainer(cfg), lambda: check_datasets(cfg, train=False)):
        with pytest.raises(
            ValueError,
            match=r"Dataset mislabelled_crowdpose_mini: .* has 42 keypoint values; expected 51",
        ):
            check()


def test_areas_are_those_of_the_segmentation_else_of_the_box():
    from pycocotools import mask as mask_util

    square = [[10.0, 10.0, 30.0, 10.0, 30.0, 30.0, 10.0, 30.0]]
    rle = mask_util.encode(np.asfortranarray(np.pad(np.ones((5, 4), np.uint8), ((0, 35), (0, 36)))))
    rle["counts"] = rle["counts"].decode()
    coco = {
        "images": [{"id": 1, "height": 40, "width": 40}],
        "annotations": [
            {
                "image_id": 1,
                "bbox": [10, 10, 20, 20],
                "segmentation": square,
                "keypoints": [0, 0, 0],
            },
            {"image_id": 1, "bbox": [0, 0, 4, 5], "segmentation": rle, "keypoints": [1, 1, 2]},
            {
                "image_id": 1,
                "bbox": [0, 0, 4, 5.5],
                "keypoints": [1, 1, 2],
                "iscrowd": 1,
                "area": 3.0,
            },
        ],
    }
    assert complete_coco_annotations(coco) == {"area": 2, "iscrowd": 2, "num_keypoints": 3}
    polygon, run_length, given = coco["annotations"]
    assert polygon["area"] == float(mask_util.area(mask_util.frPyObjects(square, 40, 40))[0]) > 0
    assert run_length["area"] == 20.0 and given["area"] == 3.0
    assert [a["num_keypoints"] for a in coco["annotations"]] == [0, 1, 1]
    assert [a["iscrowd"] for a in coco["annotations"]] == [0, 0, 1]


def test_a_test_set_without_annotations_loads(crowdpose_json, coco_mini_root, tmp_path):
    """COCO's test-dev layout: images only; detectron2 then writes predictions, not metrics."""
    path = _write_json(
        tmp_path, _broken(crowdpose_json, lambda c: c.pop("annotations")), "test.json"
    )
    register_keypoint_dataset(
        "crowdpose_test_dev", path, coco_mini_root / "val2017", **CROWDPOSE_KEYPOINTS
    )
    records = DatasetCatalog.get("crowdpose_test_dev")
    assert len(records) == 4 and not any(r.get("annotations") for r in records)


def test_training_and_test_sets_must_name_the_same_keypoints(
    crowdpose_json, coco_mini_root, tmp_path
):
    images = coco_mini_root / "val2017"
    register_keypoint_dataset("crowdpose_a", crowdpose_json, images, **CROWDPOSE_KEYPOINTS)
    swapped = dict(CROWDPOSE_KEYPOINTS, keypoint_names=CROWDPOSE_NAMES[1:] + CROWDPOSE_NAMES[:1])
    register_keypoint_dataset(
        "crowdpose_b", crowdpose_json, images, **{**swapped, "keypoint_flip_map": ()}
    )
    cfg = user_cfg(
        DEMO_CONFIG,
        "DATASETS.TRAIN",
        ("crowdpose_a",),
        "DATASETS.TEST",
        ("crowdpose_b",),
        "MODEL.ROI_KEYPOINT_HEAD.NUM_KEYPOINTS",
        14,
        "OUTPUT_DIR",
        str(tmp_path),
    )
    with pytest.raises(
        ValueError, match=r"Dataset 'crowdpose_b' \(DATASETS.TEST\) names its keypoints"
    ):
        Trainer(cfg)


def test_datasets_of_one_keypoint_set_train_together(coco_mini_dataset, coco_mini_root):
    """detectron2 compares the metadata of the datasets trained together: one registered here
    and one with detectron2's builtin COCO metadata agree."""
    register_keypoint_dataset(
        "coco_mini_again", coco_mini_root / COCO_JSON, coco_mini_root / "val2017"
    )
    flip = create_keypoint_hflip_indices([coco_mini_dataset, "coco_mini_again"])
    assert flip == create_keypoint_hflip_indices([coco_mini_dataset])


def test_unregistered_names_and_other_category_counts_are_refused(
    crowdpose_json, coco_mini_root, tmp_path
):
    cfg = user_cfg(
        DEMO_CONFIG, "DATASETS.TEST", ("crowdpose_mini_typo",), "OUTPUT_DIR", str(tmp_path)
    )
    with pytest.raises(
        KeyError,
        match="DATASETS.TEST names the dataset 'crowdpose_mini_typo', which is not registered",
    ):
        check_datasets(cfg, train=False)

    def add_category(coco):
        coco["categories"].append({"id": 2, "name": "ghost", "supercategory": "person"})

    path = _write_json(tmp_path, _broken(crowdpose_json, add_category), "two_categories.json")
    register_keypoint_dataset(
        "two_categories", path, coco_mini_root / "val2017", **CROWDPOSE_KEYPOINTS
    )
    cfg = user_cfg(DEMO_CONFIG, "DATASETS.TEST", ("two_categories",), "OUTPUT_DIR", str(tmp_path),
                   "MODEL.ROI_KEYPOINT_HEAD.NUM_KEYPOINTS", 14)  # fmt: skip
    with pytest.raises(
        ValueError,
        match=r"MODEL.ROI_HEADS.NUM_CLASSES=1 does not match dataset 'two_categories', which has 2 classes",
    ):
        check_datasets(cfg, train=False)
