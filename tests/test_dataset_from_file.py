"""A user's dataset declared by its files alone: the keypoint set read from the file's
categories in the layouts of public sets, flip pairs inferred (a wrong inference caught and
overridden), other spellings of a named set, NUM_KEYPOINTS -1, and categories kept or trained
as one class, through training and COCOEvaluator."""

import copy
import json
import logging
import re
from pathlib import Path

import numpy as np
import pytest
import torch

from detectron2.data import DatasetCatalog, MetadataCatalog
from detectron2.modeling import build_model
from detectron2.structures import Boxes, Instances

from d2_edwpose.data import KEYPOINT_SETS, register_config_datasets
from d2_edwpose.data.catalog import check_keypoint_datasets, num_keypoints
from d2_edwpose.data.keypoint_names import keypoint_sides, name_words
from d2_edwpose.data.keypoint_sets import DEFAULT_OKS_SIGMA
from d2_edwpose.data.synthetic import generate_synthetic_keypoints
from d2_edwpose.engine import Trainer, build_predictor, check_datasets
from d2_edwpose.engine.evaluation import KeypointCOCOEvaluator
from d2_edwpose.modeling.analysis import analysis_config

from conftest import user_cfg, write_config
from keypoint_layouts import LAYOUTS, coco_keypoint_file, write_images, write_layout

pytestmark = pytest.mark.usefixtures("unregister_test_datasets")
LOGGER = "d2_edwpose.data.coco_categories"


def declare(tmp_path, datasets, train=(), test=(), **sections):
    """The config of a user's datasets (name -> DATASETS.COCO_KEYPOINTS entry), with their
    images written."""
    for keys in datasets.values():
        if Path(keys["JSON_FILE"]).is_file():
            write_images(keys["JSON_FILE"], keys["IMAGE_ROOT"])
    return user_cfg(write_config(tmp_path / "config.yaml", datasets, train, test, **sections))


def unsided(name):
    return [w for w in name_words(name) if w not in ("left", "right", "l", "r")]


def entry(json_file, **keys):
    return {"JSON_FILE": str(json_file), "IMAGE_ROOT": str(json_file.parent), **keys}


# ----------------------------------------------------------------------------- keypoint sets
@pytest.mark.parametrize("layout", sorted(LAYOUTS))
def test_the_keypoint_set_comes_from_the_file(layout, tmp_path, caplog):
    names, limbs, categories, known, num_pairs = LAYOUTS[layout]
    path = write_layout(tmp_path / f"{layout}.json", layout)
    cfg = declare(tmp_path, {"mine": entry(path)}, train=["mine"])
    with caplog.at_level(logging.WARNING, logger=LOGGER):
        register_config_datasets(cfg)
    metadata = MetadataCatalog.get("mine")
    assert list(metadata.keypoint_names) == names  # the file's spelling
    assert [tuple(rule[:2]) for rule in metadata.keypoint_connection_rules] == limbs
    flip_map = metadata.keypoint_flip_map
    assert len(flip_map) == num_pairs
    # Every pair is (left, right) of one keypoint: its names differ only in the side.
    sides = dict(zip(names, keypoint_sides(names, flip_map)))
    for left, right in flip_map:
        assert (sides[left], sides[right]) == ("left", "right")
        assert unsided(left) == unsided(right), (left, right)
    warnings = [r.getMessage() for r in caplog.records]
    if known is not None:
        assert metadata.keypoint_oks_sigmas == list(KEYPOINT_SETS[known]["oks_sigmas"])
        assert not warnings
    else:
        assert metadata.keypoint_oks_sigmas == [DEFAULT_OKS_SIGMA] * len(names)
        (warning,) = warnings
        assert f"the sigma {DEFAULT_OKS_SIGMA}" in warning and "OKS_SIGMAS" in warning
    # NUM_KEYPOINTS -1 (the configs' value) is the file's count; the loader checks the file.
    assert cfg.MODEL.ROI_KEYPOINT_HEAD.NUM_KEYPOINTS == -1
    assert num_keypoints(cfg) == len(names)
    records = DatasetCatalog.get("mine")
    assert {a["category_id"] for r in records for a in r["annotations"]} <= set(
        range(len(categories))
    )
    assert metadata.thing_classes == categories


# The flip pairs whose sigmas the set's own source gives unequal: AI Challenger's are measured
# per keypoint (keypoint_eval.py's deltas), and mmpose's Animal-Pose sigmas give the two ear
# bases different values.
_UNEQUAL_SIGMA_PAIRS = {
    "ai_challenger": {
        ("left_shoulder", "right_shoulder"), ("left_elbow", "right_elbow"),
        ("left_wrist", "right_wrist"), ("left_hip", "right_hip"), ("left_knee", "right_knee"),
        ("left_ankle", "right_ankle"),
    },
    "animal_pose": {("left_ear_base", "right_ear_base")},
}  # fmt: skip


@pytest.mark.parametrize("name", sorted(KEYPOINT_SETS))
def test_the_two_keypoints_of_a_flip_pair_have_one_sigma(name):
    keypoint_set = KEYPOINT_SETS[name]
    sigma = dict(zip(keypoint_set["keypoint_names"], keypoint_set["oks_sigmas"]))
    unequal = {
        (left, right)
        for left, right in keypoint_set["keypoint_flip_map"]
        if sigma[left] != sigma[right]
    }
    assert unequal == _UNEQUAL_SIGMA_PAIRS.get(name, set())


def test_given_flip_pairs_and_sigmas_replace_the_files(tmp_path):
    names, limbs, _, _, _ = LAYOUTS["openpose_arms"]
    path = write_layout(tmp_path / "arms.json", "openpose_arms")
    sigmas = [0.05] * len(names)
    cfg = declare(
        tmp_path, {"arms": entry(path, FLIP_PAIRS=[["l_shoulder", "RShoulder"]], OKS_SIGMAS=sigmas)}
    )
    register_config_datasets(cfg)
    metadata = MetadataCatalog.get("arms")
    assert metadata.keypoint_flip_map == (("LShoulder", "RShoulder"),)  # any spelling of a name
    assert metadata.keypoint_oks_sigmas == sigmas


def test_a_dataset_declared_again_with_another_keypoint_set_is_refused(tmp_path):
    names, _, _, _, _ = LAYOUTS["openpose_arms"]
    path = write_layout(tmp_path / "arms.json", "openpose_arms")
    first = entry(path, FLIP_PAIRS=[["l_shoulder", "RShoulder"]])
    register_config_datasets(declare(tmp_path, {"arms": first}))
    register_config_datasets(declare(tmp_path, {"arms": first}))  # the same: nothing to do
    changed = {
        "FLIP_PAIRS": [],
        "OKS_SIGMAS": [0.05] * len(names),
    }
    for field, value in changed.items():
        with pytest.raises(ValueError, match="dataset 'arms' is already registered with other"):
            register_config_datasets(declare(tmp_path, {"arms": {**first, field: value}}))
    coco = json.loads(path.read_text())
    coco["categories"][0]["keypoints"] = [f"{name}_x" for name in names]
    path.write_text(json.dumps(coco))  # the file's keypoints changed
    with pytest.raises(ValueError, match="dataset 'arms' is already registered with other"):
        register_config_datasets(
            declare(tmp_path, {"arms": entry(path, FLIP_PAIRS=[["l_shoulder_x", "RShoulder_x"]])})
        )


def test_a_dataset_whose_file_appears_is_registered_with_its_keypoints(tmp_path):
    path = tmp_path / "later.json"
    cfg = declare(tmp_path, {"later": entry(path)})
    register_config_datasets(cfg)
    assert MetadataCatalog.get("later").get("keypoint_names") is None
    write_layout(path, "mpii")
    register_config_datasets(cfg)
    assert len(MetadataCatalog.get("later").keypoint_names) == 16


def _cow_file(tmp_path, name="cow.json"):
    """Legs numbered around the body (L1 front left, L2 back left, R1 back right, R2 front
    right): the names pair L1 with R1, which are not mirror twins."""
    names = ["withers", "tail", "leg_L1", "leg_L2", "leg_R1", "leg_R2"]
    limbs = [("withers", "tail"), ("withers", "leg_L1"), ("withers", "leg_R2"),
             ("tail", "leg_L2"), ("tail", "leg_R1")]  # fmt: skip
    path = tmp_path / name
    path.write_text(json.dumps(coco_keypoint_file(names, limbs, ["cow"])))
    return path


def test_a_wrong_inferred_flip_map_is_refused_and_can_be_given(tmp_path):
    path = _cow_file(tmp_path)
    cfg = declare(tmp_path, {"cows": entry(path)})
    with pytest.raises(ValueError) as error:
        register_config_datasets(cfg)
    message = str(error.value)
    assert "DATASETS.COCO_KEYPOINTS.cows" in message
    assert "inferred from the names: [['leg_L1', 'leg_R1'], ['leg_L2', 'leg_R2']]" in message
    assert "map the limbs [['withers', 'leg_L1'], ['withers', 'leg_R2']" in message
    assert "give DATASETS.COCO_KEYPOINTS.cows.FLIP_PAIRS" in message
    assert "cows" not in DatasetCatalog.list()

    pairs = [["leg_L1", "leg_R2"], ["leg_L2", "leg_R1"]]
    register_config_datasets(declare(tmp_path, {"cows": entry(path, FLIP_PAIRS=pairs)}))
    assert MetadataCatalog.get("cows").keypoint_flip_map == tuple(map(tuple, pairs))


def test_a_sided_name_without_twin_is_refused(tmp_path):
    names = ["left_wrist", "right_wrist", "left_elbow", "r_elbow"]
    path = tmp_path / "arms.json"
    path.write_text(json.dumps(coco_keypoint_file(names, [], ["person"])))
    with pytest.raises(
        ValueError, match=re.escape("the keypoints ['left_elbow', 'r_elbow'] name a side")
    ):
        register_config_datasets(declare(tmp_path, {"arms": entry(path)}))


@pytest.mark.parametrize("names", [["LHIP", "RHIP", "NOSE"], ["keypoint_0", "keypoint_1"]])
def test_names_that_give_no_flip_pairs_need_flip_pairs(names, tmp_path):
    path = tmp_path / "plain.json"
    path.write_text(json.dumps(coco_keypoint_file(names, [], ["thing"])))
    with pytest.raises(ValueError) as error:
        register_config_datasets(declare(tmp_path, {"plain": entry(path)}))
    message = str(error.value)
    assert message.startswith("DATASETS.COCO_KEYPOINTS.plain: no flip pairs")
    assert str(names) in message and "DATASETS.COCO_KEYPOINTS.plain.FLIP_PAIRS" in message
    assert "plain" not in DatasetCatalog.list()
    register_config_datasets(declare(tmp_path, {"plain": entry(path, FLIP_PAIRS=[])}))
    assert MetadataCatalog.get("plain").keypoint_flip_map == ()


@pytest.mark.parametrize("field", ["skeleton", "flip_pairs"])
def test_an_index_0_is_refused_as_not_1_based(field, tmp_path):
    coco = coco_keypoint_file(["nose", "left_eye", "right_eye"], [], ["face"])
    coco["categories"][0][field] = [[0, 1], [1, 2]]
    path = tmp_path / "face.json"
    path.write_text(json.dumps(coco))
    with pytest.raises(ValueError) as error:
        register_config_datasets(declare(tmp_path, {"face": entry(path)}))
    message = str(error.value)
    assert f"category 'face': {field} entry [0, 1] has the index 0" in message
    assert "1-based" in message


def test_a_named_set_matches_the_files_other_spelling_or_names_what_differs(tmp_path, caplog):
    path = write_layout(tmp_path / "aic.json", "ai_challenger")
    cfg = declare(tmp_path, {"aic": entry(path, KEYPOINT_SET="ai_challenger")}, test=["aic"])
    check_datasets(cfg, train=False)  # "Right Shoulder" is ai_challenger's "right_shoulder"
    registered = MetadataCatalog.get("aic").keypoint_names
    assert registered == KEYPOINT_SETS["ai_challenger"]["keypoint_names"]

    cfg = declare(tmp_path, {"cp": entry(path, KEYPOINT_SET="crowdpose")}, test=["cp"])
    with pytest.raises(ValueError) as error:
        check_datasets(cfg, train=False)
    message = str(error.value)
    assert "category 'person' names the keypoints ['Right Shoulder'" in message
    assert "0: file 'Right Shoulder' vs registered 'left_shoulder'" in message
    assert "leave KEYPOINT_SET out" in message

    coco = json.loads(path.read_text())
    coco["categories"][0]["keypoints"] = coco["categories"][0]["keypoints"][::-1]
    (tmp_path / "reversed.json").write_text(json.dumps(coco))
    cfg = declare(
        tmp_path, {"rev": entry(tmp_path / "reversed.json", KEYPOINT_SET="ai_challenger")},
        test=["rev"],
    )  # fmt: skip
    with pytest.raises(ValueError, match="the same keypoints in another order"):
        check_datasets(cfg, train=False)


def test_num_keypoints_minus_one_needs_datasets_with_keypoints(tmp_path):
    path = write_layout(tmp_path / "mpii.json", "mpii")
    missing = {"gone": entry(tmp_path / "absent.json")}
    cfg = declare(tmp_path, {"mpii": entry(path), **missing}, train=["gone", "mpii"])
    register_config_datasets(cfg)  # a missing file registers without keypoints
    assert num_keypoints(cfg) == 16
    cfg = declare(tmp_path, missing, train=["gone"])
    register_config_datasets(cfg)
    with pytest.raises(ValueError, match=r"NUM_KEYPOINTS=-1 takes the number of keypoints"):
        num_keypoints(cfg)
    with pytest.raises(FileNotFoundError, match=r"Dataset 'gone': json_file .*absent.json"):
        check_datasets(cfg, train=True)  # a run that uses it names the file
    cfg.MODEL.ROI_KEYPOINT_HEAD.NAME = "KRCNNConvDeconvUpsampleHead"
    cfg.MODEL.ROI_KEYPOINT_HEAD.CONV_TYPE = "vanilla"
    with pytest.raises(ValueError, match=r"NUM_KEYPOINTS=-1 is invalid: .* does not take -1"):
        build_model(cfg)


def test_a_resolved_num_keypoints_is_named_as_resolved(tmp_path):
    mpii = entry(write_layout(tmp_path / "mpii.json", "mpii"))
    aic = entry(write_layout(tmp_path / "aic.json", "ai_challenger"))
    cfg = declare(tmp_path, {"mpii": mpii, "aic": aic}, train=["mpii"], test=["aic"])
    register_config_datasets(cfg)
    with pytest.raises(ValueError) as error:
        check_keypoint_datasets(cfg, ["mpii"], ["aic"])
    assert str(error.value).startswith(
        "MODEL.ROI_KEYPOINT_HEAD.NUM_KEYPOINTS=-1 resolved to 16 from dataset 'mpii' "
        "(DATASETS.TRAIN) does not match dataset 'aic' (DATASETS.TEST), which has 14 keypoints"
    )


def test_a_predictor_or_analysis_of_a_user_config_takes_its_keypoint_count(tmp_path):
    path = write_layout(tmp_path / "mpii.json", "mpii")
    config = write_config(tmp_path / "config.yaml", {"mine": entry(path)}, ["mine"], [])
    predictor = build_predictor(user_cfg(config, "MODEL.DEVICE", "cpu"))
    assert predictor.model.roi_heads.keypoint_head.num_keypoints == 16
    DatasetCatalog.remove("mine")
    MetadataCatalog.remove("mine")
    assert analysis_config(config).DATASETS.TRAIN == ("mine",)
    assert "mine" in DatasetCatalog.list()


# ----------------------------------------------------------------------------- categories
def _perfect_predictions(evaluator, records, num_keypoints):
    """Feed the evaluator the ground truth of ``records`` as predictions (class: category_id)."""
    evaluator.reset()
    for record in records:
        people = record["annotations"]
        instances = Instances((record["height"], record["width"]))
        boxes = [[x, y, x + w, y + h] for x, y, w, h in (a["bbox"] for a in people)]
        instances.pred_boxes = Boxes(torch.tensor(boxes, dtype=torch.float32).reshape(-1, 4))
        instances.scores = torch.ones(len(people))
        instances.pred_classes = torch.tensor([a["category_id"] for a in people], dtype=torch.int64)
        instances.pred_keypoints = torch.tensor(
            [a["keypoints"] for a in people], dtype=torch.float32
        ).reshape(-1, num_keypoints, 3)
        evaluator.process([{"image_id": record["image_id"]}], [{"instances": instances}])
    return evaluator.evaluate()


@pytest.mark.parametrize(
    "keys, classes, kept",
    [
        ({"ONE_CLASS": "animal"}, ["animal"], {0, 1, 2}),
        ({"CATEGORIES": ["species_2", "species_0"]}, ["species_0", "species_2"], {0, 2}),
        ({"CATEGORIES": ["species_0", "species_2"], "ONE_CLASS": "animal"}, ["animal"], {0, 2}),
    ],
)
def test_categories_kept_or_merged_load_and_evaluate_as_those_classes(
    keys, classes, kept, tmp_path
):
    names, limbs, _, _, _ = LAYOUTS["ap10k"]
    coco = coco_keypoint_file(names, limbs, ["species_0", "species_1", "species_2"], num_images=3)
    path = tmp_path / "animals.json"
    path.write_text(json.dumps(coco))
    cfg = declare(tmp_path, {"animals": entry(path, **keys)}, test=["animals"])
    cfg.MODEL.ROI_HEADS.NUM_CLASSES = len(classes)
    check_datasets(cfg, train=False)
    assert MetadataCatalog.get("animals").thing_classes == classes
    records = DatasetCatalog.get("animals")
    loaded = [a for r in records for a in r["annotations"]]
    expected = [a for a in coco["annotations"] if a["category_id"] - 1 in kept]
    assert [a["bbox"] for a in loaded] == [a["bbox"] for a in expected]
    assert {a["category_id"] for a in loaded} == set(range(len(classes)))

    evaluator = KeypointCOCOEvaluator(
        "animals", distributed=False, output_dir=str(tmp_path / "eval"),
        kpt_oks_sigmas=MetadataCatalog.get("animals").keypoint_oks_sigmas,
    )  # fmt: skip
    assert [c["name"] for c in evaluator._coco_api.dataset["categories"]] == classes
    assert len(evaluator._coco_api.anns) == len(expected)
    results = _perfect_predictions(evaluator, records, len(names))
    assert results["bbox"]["AP"] == pytest.approx(100)
    assert results["keypoints"]["AP"] == pytest.approx(100)
    # A class predicted wrong is a miss: the ground truth holds the classes the model predicts.
    if len(classes) > 1:
        wrong = copy.deepcopy(records)
        for record in wrong:
            for annotation in record["annotations"]:
                annotation["category_id"] = 1 - annotation["category_id"]
        assert _perfect_predictions(evaluator, wrong, len(names))["bbox"]["AP"] == pytest.approx(0)


@pytest.mark.parametrize("keypoint_set", [{}, {"KEYPOINT_SET": "ap10k"}])
def test_an_empty_category_list_is_refused(keypoint_set, tmp_path):
    path = write_layout(tmp_path / "ap10k.json", "ap10k")
    with pytest.raises(ValueError, match="must list at least one category"):
        register_config_datasets(
            declare(tmp_path, {"none": entry(path, CATEGORIES=[], **keypoint_set)})
        )


def test_a_multi_category_file_needs_num_classes_or_one_class(tmp_path):
    path = write_layout(tmp_path / "ap10k.json", "ap10k")
    cfg = declare(tmp_path, {"ap10k": entry(path)}, test=["ap10k"])
    with pytest.raises(
        ValueError,
        match=r"NUM_CLASSES=1 does not match dataset 'ap10k', which has 54 classes .*"
        r"DATASETS.COCO_KEYPOINTS.ap10k.ONE_CLASS",
    ):
        check_datasets(cfg, train=False)


@pytest.fixture(scope="module")
def three_species(tmp_path_factory):
    """Synthetic images whose people are labelled as three categories sharing the keypoints."""
    root = generate_synthetic_keypoints(tmp_path_factory.mktemp("species"), 4, 0, seed=5)
    json_file = f"{root}/annotations/person_keypoints_train.json"
    with open(json_file) as f:
        coco = json.load(f)
    (person,) = coco["categories"]
    species = ["cat", "dog", "horse"]
    coco["categories"] = [{**person, "id": i + 1, "name": name} for i, name in enumerate(species)]
    for index, annotation in enumerate(coco["annotations"]):
        annotation["category_id"] = index % 3 + 1
    path = tmp_path_factory.mktemp("species_json") / "species.json"
    path.write_text(json.dumps(coco))
    return {"JSON_FILE": str(path), "IMAGE_ROOT": f"{root}/train"}


def test_one_class_trains_and_evaluates(three_species, tmp_path):
    cfg = declare(
        tmp_path, {"species": {**three_species, "ONE_CLASS": "animal"}}, ["species"], ["species"],
        SOLVER={"IMS_PER_BATCH": 1, "MAX_ITER": 2, "WARMUP_ITERS": 1, "STEPS": []},
        TEST={"EVAL_PERIOD": 0, "PRECISE_BN": {"ENABLED": False}}, DATALOADER={"NUM_WORKERS": 0},
        OUTPUT_DIR=str(tmp_path / "run"), SEED=0,
    )  # fmt: skip
    trainer = Trainer(cfg)
    trainer.resume_or_load(resume=False)
    trainer.train()  # ends with COCOEvaluator on the test set (detectron2's EvalHook)
    losses = trainer.storage.history("loss_keypoint").values()
    assert len(losses) == 2 and all(np.isfinite(v) for v, _ in losses)
    results = trainer.storage.latest()
    assert "bbox/AP" in results and "keypoints/AP" in results
    # The predictions are of the one class of the ground truth that COCOEvaluator scored.
    predictions = tmp_path / "run/inference/species/coco_instances_results.json"
    predictions = json.loads(predictions.read_text())
    assert predictions and {p["category_id"] for p in predictions} == {1}
    assert MetadataCatalog.get("species").thing_classes == ["animal"]
