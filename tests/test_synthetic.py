"""The synthetic keypoint dataset: files, labels, determinism, caching, detectron2 loading."""
import json
import os
import subprocess
import sys
from pathlib import Path

import cv2
import numpy as np
import pytest

from detectron2.data import DatasetCatalog, MetadataCatalog
from detectron2.data.datasets.builtin_meta import (
    COCO_PERSON_KEYPOINT_FLIP_MAP,
    COCO_PERSON_KEYPOINT_NAMES,
    KEYPOINT_CONNECTION_RULES,
)

from d2_edwpose.data.synthetic import (
    DATASET_NAMES,
    default_root,
    generate_synthetic_keypoints,
    register_synthetic_keypoints,
)

NUM_TRAIN, NUM_VAL, SEED = 6, 4, 0
SPLITS = ("train", "val")
KP = {name: i for i, name in enumerate(COCO_PERSON_KEYPOINT_NAMES)}


def _load(root, split):
    with open(Path(root) / "annotations" / f"person_keypoints_{split}.json") as f:
        return json.load(f)


def _files(root):
    """{relative path: bytes} of every file of a generated dataset."""
    root = Path(root)
    return {
        str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()
    }


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
    root = tmp_path_factory.mktemp("synthetic")
    assert generate_synthetic_keypoints(root, NUM_TRAIN, NUM_VAL, SEED) == str(root)
    return root


def test_layout_and_coco_format(dataset):
    for split, count in zip(SPLITS, (NUM_TRAIN, NUM_VAL)):
        data = _load(dataset, split)
        assert len(data["images"]) == count
        assert data["info"]["params"]["seed"] == SEED
        (category,) = data["categories"]
        assert category["id"] == 1 and category["name"] == "person"
        assert category["keypoints"] == list(COCO_PERSON_KEYPOINT_NAMES)
        assert len(category["skeleton"]) == 19
        assert len({im["id"] for im in data["images"]}) == count
        assert len({a["id"] for a in data["annotations"]}) == len(data["annotations"])
        assert min(a["id"] for a in data["annotations"]) >= 1  # COCOeval: id 0 = unmatched
        for image in data["images"]:
            pixels = cv2.imread(str(dataset / split / image["file_name"]))
            assert pixels.shape == (image["height"], image["width"], 3)
            assert 240 <= image["width"] <= 400 and 240 <= image["height"] <= 400
        people = [
            sum(a["image_id"] == im["id"] for a in data["annotations"]) for im in data["images"]
        ]
        assert all(1 <= n <= 4 for n in people), people


def test_annotations_are_consistent(dataset):
    for split in SPLITS:
        data = _load(dataset, split)
        sizes = {im["id"]: (im["width"], im["height"]) for im in data["images"]}
        for ann in data["annotations"]:
            width, height = sizes[ann["image_id"]]
            x, y, w, h = ann["bbox"]
            assert w > 0 and h > 0 and x >= 0 and y >= 0 and x + w <= width and y + h <= height
            assert 0 < ann["area"] <= w * h
            assert ann["category_id"] == 1 and ann["iscrowd"] == 0
            assert ann["segmentation"] and all(
                len(p) >= 6 and len(p) % 2 == 0 for p in ann["segmentation"]
            )
            kps = np.array(ann["keypoints"], dtype=float).reshape(17, 3)
            labelled = kps[:, 2] > 0
            assert set(kps[:, 2]) <= {0, 1, 2}
            assert ann["num_keypoints"] == labelled.sum() > 0
            assert (kps[~labelled, :2] == 0).all()
            tol = 1.0
            assert (kps[labelled, 0] >= x - tol).all() and (kps[labelled, 0] <= x + w + tol).all()
            assert (kps[labelled, 1] >= y - tol).all() and (kps[labelled, 1] <= y + h + tol).all()
            face = [KP[n] for n in ("nose", "left_eye", "right_eye")]
            if ann["facing"] == "back":  # the face is not drawn: labelled, not visible
                assert (kps[face, 2] != 2).all()


def test_left_and_right_follow_the_facing_direction(dataset):
    facings, checked = set(), 0
    for split in SPLITS:
        for ann in _load(dataset, split)["annotations"]:
            kps = np.array(ann["keypoints"], dtype=float).reshape(17, 3)
            facings.add(ann["facing"])
            # Figures are upright (tilted by less than 25 degrees), so the person's left
            # shoulder/hip is on the image's right exactly when they face the camera.
            for joint in ("shoulder", "hip"):
                left, right = kps[KP["left_" + joint]], kps[KP["right_" + joint]]
                if left[2] > 0 and right[2] > 0:
                    assert (left[0] > right[0]) == (ann["facing"] == "front"), (ann["id"], joint)
                    checked += 1
    assert facings == {"front", "back"} and checked > 20


def test_same_seed_same_files_other_seed_other_files(dataset, tmp_path):
    again = generate_synthetic_keypoints(tmp_path / "again", NUM_TRAIN, NUM_VAL, SEED)
    assert _files(again) == _files(dataset)
    other = _files(generate_synthetic_keypoints(tmp_path / "other", NUM_TRAIN, NUM_VAL, SEED + 1))
    reference = _files(dataset)
    assert other.keys() == reference.keys()
    assert all(other[name] != reference[name] for name in reference)


def test_images_do_not_depend_on_the_counts(dataset, tmp_path):
    fewer = generate_synthetic_keypoints(tmp_path, 2, 1, SEED)
    for name in ("train/000000.jpg", "train/000001.jpg", "val/000000.jpg"):
        assert (Path(fewer) / name).read_bytes() == (dataset / name).read_bytes()


def test_second_call_reuses_the_dataset_and_new_parameters_regenerate(tmp_path):
    generate_synthetic_keypoints(tmp_path, 2, 1, SEED)
    paths = [p for p in tmp_path.rglob("*") if p.is_file()]
    mtimes = {p: p.stat().st_mtime_ns for p in paths}
    generate_synthetic_keypoints(tmp_path, 2, 1, SEED)
    assert {p: p.stat().st_mtime_ns for p in paths} == mtimes

    generate_synthetic_keypoints(tmp_path, 2, 1, SEED + 1)
    assert _load(tmp_path, "train")["info"]["params"]["seed"] == SEED + 1
    image = tmp_path / "train" / "000000.jpg"
    assert image.stat().st_mtime_ns != mtimes[image]

    # An interrupted run (here: a missing image) is detected and completed.
    image.unlink()
    generate_synthetic_keypoints(tmp_path, 2, 1, SEED + 1)
    assert image.is_file()


def test_detectron2_loads_the_registered_dataset(dataset, restore_synthetic_registration):
    register_synthetic_keypoints(dataset)
    register_synthetic_keypoints(dataset)  # re-import safety: a no-op, no crash
    for name, split in zip(DATASET_NAMES, SPLITS):
        dicts = DatasetCatalog.get(name)
        data = _load(dataset, split)
        assert len(dicts) == len(data["images"])
        by_id = {a["id"]: a for a in data["annotations"]}
        first = dicts[0]
        assert os.path.isfile(first["file_name"])
        loaded = [obj["keypoints"] for d in dicts for obj in d["annotations"]]
        stored = [by_id[a["id"]]["keypoints"] for a in data["annotations"]]
        assert len(loaded) == len(stored)
        for got, want in zip(loaded, stored):
            got, want = np.array(got).reshape(17, 3), np.array(want, dtype=float).reshape(17, 3)
            labelled = want[:, 2] > 0
            # detectron2 adds 0.5 to labelled COCO keypoints (pixel index -> coordinate).
            np.testing.assert_allclose(got[labelled, :2], want[labelled, :2] + 0.5)
            np.testing.assert_array_equal(got[:, 2], want[:, 2])

        metadata = MetadataCatalog.get(name)
        assert metadata.thing_classes == ["person"]
        assert metadata.evaluator_type == "coco"
        assert metadata.json_file == str(dataset / "annotations" / f"person_keypoints_{split}.json")
        assert tuple(metadata.keypoint_names) == COCO_PERSON_KEYPOINT_NAMES
        assert tuple(metadata.keypoint_flip_map) == COCO_PERSON_KEYPOINT_FLIP_MAP
        assert metadata.keypoint_connection_rules == KEYPOINT_CONNECTION_RULES


def test_missing_dataset_error_names_the_file_and_the_command(tmp_path, restore_synthetic_registration):
    root = tmp_path / "not generated"
    register_synthetic_keypoints(root)
    with pytest.raises(FileNotFoundError) as error:
        DatasetCatalog.get(DATASET_NAMES[0])
    message = str(error.value)
    assert str(root / "annotations" / "person_keypoints_train.json") in message
    assert "python -m d2_edwpose.tools.generate_synthetic_keypoints --output" in message
    assert "'" + str(root) + "'" in message  # quoted: the path has a space


def test_importing_the_package_registers_the_default_root_lazily(tmp_path):
    root = tmp_path / "absent"  # registering must not read anything
    code = (
        "from detectron2.data import MetadataCatalog\n"
        "import d2_edwpose.data\n"
        f"print(MetadataCatalog.get({DATASET_NAMES[1]!r}).json_file)\n"
    )
    env = dict(os.environ, D2_EDWPOSE_SYNTHETIC_ROOT=str(root))
    result = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == str(root / "annotations" / "person_keypoints_val.json")


def test_default_root_falls_back_to_detectron2_datasets(monkeypatch):
    monkeypatch.delenv("D2_EDWPOSE_SYNTHETIC_ROOT", raising=False)
    monkeypatch.setenv("DETECTRON2_DATASETS", "/data/d2")
    assert default_root() == os.path.join("/data/d2", "synthetic_keypoints")
    monkeypatch.delenv("DETECTRON2_DATASETS")
    assert default_root() == os.path.join("datasets", "synthetic_keypoints")
