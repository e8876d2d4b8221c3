"""tools.convert_dataset: YOLO-pose datasets to COCO keypoint files the checks accept (names and
flip pairs carried over), back to YOLO-pose, boxes and keypoints within a pixel; malformed
label lines named by file and line."""

import json
import re

import numpy as np
import pytest
import yaml
from PIL import Image

from detectron2.data import DatasetCatalog, MetadataCatalog
from detectron2.data import detection_utils as utils

from d2_edwpose.data import register_config_datasets
from d2_edwpose.data.yolo_pose import read_labels
from d2_edwpose.engine import check_datasets
from d2_edwpose.tools import convert_dataset

from conftest import user_cfg, write_config

pytestmark = pytest.mark.usefixtures("unregister_test_datasets")

KEYPOINTS = ["nose", "left_eye", "right_eye", "left_ear", "right_ear"]
FLIP_IDX = [0, 2, 1, 4, 3]
# (split, name, (width, height) as shown, EXIF orientation)
IMAGES = [
    ("train", "a.png", (64, 48), None),
    ("train", "b.jpg", (200, 120), 6),  # stored 120 x 200, shown turned by 90 degrees
    ("train", "empty.png", (30, 30), None),
    ("val", "c.png", (90, 70), None),
]


def _label_line(rng, label, ndim=3):
    cx, cy = rng.uniform(0.3, 0.7, 2)
    w, h = rng.uniform(0.1, 0.5, 2)
    values = [label, cx, cy, w, h]
    for k in range(len(KEYPOINTS)):
        visibility = [0, 1, 2, 2][k % 4]
        point = list(rng.uniform(0.05, 0.95, 2)) if visibility else [0.0, 0.0]
        values += point + ([visibility] if ndim == 3 else [])
    return " ".join(str(v) if isinstance(v, int) else f"{v:.6f}" for v in values)


def write_yolo_dataset(root, ndim=3, kpt_names=True):
    """A YOLO-pose dataset under ``root``: images of several sizes, labels, data.yaml."""
    rng = np.random.default_rng(0)
    labels = {}
    for split, name, (width, height), orientation in IMAGES:
        image = root / "images" / split / name
        image.parent.mkdir(parents=True, exist_ok=True)
        if orientation:
            exif = Image.Exif()
            exif[0x0112] = orientation
            Image.new("RGB", (height, width), "gray").save(image, exif=exif)
        else:
            Image.new("RGB", (width, height), "gray").save(image)
        if name.startswith("empty"):
            continue
        lines = [_label_line(rng, label, ndim) for label in (0, 1, 0)]
        label_file = root / "labels" / split / (image.stem + ".txt")
        label_file.parent.mkdir(parents=True, exist_ok=True)
        label_file.write_text("\n".join(lines) + "\n")
        labels[name] = lines
    data = {
        "path": ".",
        "train": "images/train",
        "val": "images/val",
        "kpt_shape": [len(KEYPOINTS), ndim],
        "flip_idx": FLIP_IDX,
        "names": {0: "person", 1: "statue"},
    }
    if kpt_names:
        data["kpt_names"] = {0: KEYPOINTS, 1: KEYPOINTS}
    (root / "data.yaml").write_text(yaml.safe_dump(data))
    return root / "data.yaml", labels


def _values(line):
    return [float(v) for v in line.split()]


def test_yolo_pose_round_trips_through_coco_files_the_checks_accept(tmp_path, capsys):
    data_yaml, labels = write_yolo_dataset(tmp_path / "yolo")
    written = convert_dataset.main(["--from", "yolo-pose", str(data_yaml), str(tmp_path / "coco")])
    assert sorted(written) == ["train", "val"]
    printed = capsys.readouterr().out
    coco = json.loads(written["train"].read_text())
    sizes = {image["file_name"]: (image["width"], image["height"]) for image in coco["images"]}
    assert sizes == {f"images/train/{n}": s for sp, n, s, _ in IMAGES if sp == "train"}
    # The shown size of the turned JPEG is what detectron2 reads.
    assert utils.read_image(str(tmp_path / "yolo/images/train/b.jpg")).shape[:2] == (120, 200)

    # Pixels: the normalised values times the image's size (within a pixel after rounding).
    by_image = {image["id"]: image for image in coco["images"]}
    converted = {}
    for annotation in coco["annotations"]:
        image = by_image[annotation["image_id"]]
        converted.setdefault(image["file_name"].split("/")[-1], []).append(annotation)
    for name, lines in labels.items():
        if name == "c.png":
            continue
        width, height = sizes[f"images/train/{name}"]
        for line, annotation in zip(lines, converted[name]):
            label, cx, cy, w, h, *points = _values(line)
            assert annotation["category_id"] == label + 1
            expected = [(cx - w / 2) * width, (cy - h / 2) * height, w * width, h * height]
            assert np.allclose(annotation["bbox"], expected, atol=0.01)
            for (x, y, v), (px, py, pv) in zip(
                np.reshape(points, (-1, 3)), np.reshape(annotation["keypoints"], (-1, 3))
            ):
                assert pv == v
                assert np.allclose([px, py], [x * width, y * height] if v else [0, 0], atol=0.01)

    # Declared by its files alone: names and flip pairs carried over, and the checks pass.
    datasets = {
        f"converted_{split}": {"JSON_FILE": str(path), "IMAGE_ROOT": str(tmp_path / "yolo")}
        for split, path in written.items()
    }
    assert all(f"converted_{split}" in printed for split in written)
    cfg = user_cfg(
        write_config(tmp_path / "c.yaml", datasets, ["converted_train"], ["converted_val"]),
        "MODEL.ROI_HEADS.NUM_CLASSES", 2,
    )  # fmt: skip
    check_datasets(cfg, train=True)
    metadata = MetadataCatalog.get("converted_train")
    assert list(metadata.keypoint_names) == KEYPOINTS
    assert metadata.keypoint_flip_map == (("left_eye", "right_eye"), ("left_ear", "right_ear"))
    assert metadata.thing_classes == ["person", "statue"]
    assert len(DatasetCatalog.get("converted_train")) == 3

    # And back: the same labels, within a pixel of the largest image (1 / 200).
    back = convert_dataset.main(
        ["--from", "coco", "--split", "train", str(written["train"]), str(tmp_path / "yolo"),
         "--split", "val", str(written["val"]), str(tmp_path / "yolo"), str(tmp_path / "back")]
    )  # fmt: skip
    data = yaml.safe_load(back.read_text())
    assert data["kpt_shape"] == [len(KEYPOINTS), 3] and data["flip_idx"] == FLIP_IDX
    assert data["names"] == {0: "person", 1: "statue"} and data["kpt_names"][0] == KEYPOINTS
    for split, name, _, _ in IMAGES:
        stem = name.rsplit(".", 1)[0]
        lines = (tmp_path / "back/labels" / split / f"{stem}.txt").read_text().splitlines()
        assert (tmp_path / "back/images" / split / name).resolve() == (
            tmp_path / "yolo/images" / split / name
        ).resolve()
        assert len(lines) == len(labels.get(name, []))
        for original, again in zip(labels.get(name, []), lines):
            assert np.allclose(_values(original), _values(again), atol=1 / 200)


def test_two_values_per_keypoint_and_no_names(tmp_path):
    data_yaml, labels = write_yolo_dataset(tmp_path / "yolo", ndim=2, kpt_names=False)
    written, _ = convert_dataset.yolo_pose_to_coco(data_yaml, tmp_path / "coco")
    coco = json.loads(written["train"].read_text())
    (category, _) = coco["categories"]
    assert category["keypoints"] == [f"keypoint_{k}" for k in range(len(KEYPOINTS))]
    assert category["flip_pairs"] == [[2, 3], [4, 5]]  # 1-based, as COCO's skeleton
    visibilities = {v for a in coco["annotations"] for v in a["keypoints"][2::3]}
    assert visibilities == {0, 2}  # (0, 0) is not labelled, any other point visible
    datasets = {
        "unnamed": {"JSON_FILE": str(written["train"]), "IMAGE_ROOT": str(tmp_path / "yolo")}
    }
    register_config_datasets(user_cfg(write_config(tmp_path / "c.yaml", datasets, [], [])))
    assert MetadataCatalog.get("unnamed").keypoint_flip_map == (
        ("keypoint_1", "keypoint_2"), ("keypoint_3", "keypoint_4"),
    )  # fmt: skip


def test_a_box_over_the_image_edge_is_clipped_to_the_image(tmp_path):
    data_yaml, _ = write_yolo_dataset(tmp_path / "yolo")
    label_file = tmp_path / "yolo/labels/train/a.txt"  # a.png: 64 x 48
    label_file.write_text("0 0.95 0.1 0.3 0.4" + " 0.9 0.1 2" * len(KEYPOINTS) + "\n")
    written, _ = convert_dataset.yolo_pose_to_coco(data_yaml, tmp_path / "coco")
    coco = json.loads(written["train"].read_text())
    (image,) = [i for i in coco["images"] if i["file_name"].endswith("a.png")]
    (annotation,) = [a for a in coco["annotations"] if a["image_id"] == image["id"]]
    assert annotation["bbox"] == pytest.approx([51.2, 0, 12.8, 14.4])
    assert annotation["area"] == pytest.approx(12.8 * 14.4, abs=1e-3)


@pytest.mark.parametrize(
    "line, message",
    [
        ("0 0.5 0.5 0.2 0.2", "5 values; expected 20"),
        ("0 0.5 0.5 0.2 0.2" + " 0.5 0.5 x" + " 0.5 0.5 2" * 4, "is not a number"),
        ("2 0.5 0.5 0.2 0.2" + " 0.5 0.5 2" * 5, "class '2' is not a class index"),
        ("0 0.5 0.5 0.2 0.2" + " 1.5 0.5 2" + " 0.5 0.5 2" * 4, r"in \[0, 1\]"),
        ("0 0.5 0.5 0.0 0.2" + " 0.5 0.5 2" * 5, "the box non-empty"),
        ("0 0.5 0.5 0.2 0.2" + " 0.5 0.5 3" + " 0.5 0.5 2" * 4, "a visibility is not 0, 1 or 2"),
    ],
)
def test_malformed_label_lines_are_refused_with_the_file_and_line(tmp_path, line, message):
    data_yaml, _ = write_yolo_dataset(tmp_path / "yolo")
    label_file = tmp_path / "yolo/labels/train/a.txt"
    good = label_file.read_text()
    label_file.write_text(good + "\n" + line + "\n")
    with pytest.raises(ValueError, match=re.escape(f"{label_file}, line 5: ") + ".*" + message):
        convert_dataset.yolo_pose_to_coco(data_yaml, tmp_path / "coco")
    assert not (tmp_path / "coco" / "train.json").exists()
    assert read_labels(tmp_path / "yolo/labels/train/none.txt", 5, 3, 2) == []


@pytest.mark.parametrize(
    "change, message",
    [
        ({"kpt_shape": [5, 4]}, r"kpt_shape \[5, 4\] is not \[K, 2\] or \[K, 3\]"),
        ({"flip_idx": [0, 2, 1, 3, 3]}, "is not a flip of the 5 keypoints"),
        ({"kpt_names": {0: ["a", "b"]}}, "kpt_names of class 0 must be 5 names"),
        ({"train": "images/nowhere"}, "is neither a folder nor a .txt list of images"),
    ],
)
def test_malformed_dataset_yamls_are_refused(tmp_path, change, message):
    data_yaml, _ = write_yolo_dataset(tmp_path / "yolo")
    data = {**yaml.safe_load(data_yaml.read_text()), **change}
    data_yaml.write_text(yaml.safe_dump(data))
    with pytest.raises(ValueError, match=message):
        convert_dataset.yolo_pose_to_coco(data_yaml, tmp_path / "coco")
