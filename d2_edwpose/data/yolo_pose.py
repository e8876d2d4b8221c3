"""Ultralytics' YOLO-pose dataset format to COCO keypoint files, and back.

A YOLO-pose dataset is a dataset yaml::

    path: ../datasets/mine     # the root (relative: to the yaml's folder, else to the cwd)
    train: images/train        # a folder of images, a .txt file listing images, or a list
    val: images/val
    kpt_shape: [17, 3]         # K keypoints of (x, y) or (x, y, visibility)
    flip_idx: [0, 2, 1, ...]   # the keypoint a horizontal flip puts in place of each
    names: {0: person}
    kpt_names: {0: [nose, left_eye, ...]}   # optional

with one label file per image (``.../images/...`` -> ``.../labels/....txt``), a line per
object: ``class cx cy w h x1 y1 [v1] ... xK yK [vK]``, all coordinates divided by the image's
width or height. Visibilities are COCO's (0: not labelled, 1: labelled, hidden, 2: visible);
with 2 values per keypoint a keypoint at (0, 0) is not labelled and any other is visible.

:func:`yolo_pose_to_coco` writes one COCO keypoint file per split, whose categories carry the
keypoint names (``kpt_names``, else ``keypoint_0`` ...) and the flip pairs of ``flip_idx``
(``flip_pairs``: 1-based index pairs, as COCO's ``skeleton``), which a dataset declared without
``KEYPOINT_SET`` takes (:mod:`.coco_categories`). :func:`coco_to_yolo_pose` writes a YOLO-pose
dataset whose ``images/`` are links to the COCO dataset's images.
"""

import collections
import json
import logging
import math
import os
from pathlib import Path

import yaml
from PIL import Image

from ..utils.atomic_files import atomic_open
from ..utils.image_files import (
    IMAGE_SUFFIXES,
    TRANSPOSING_ORIENTATIONS,
    exif_orientation,
    is_image_file,
)
from ..utils.validation import is_int
from .coco_categories import keypoint_set_from_categories

__all__ = ["coco_to_yolo_pose", "read_yolo_pose_yaml", "yolo_pose_to_coco"]

logger = logging.getLogger(__name__)

_SPLITS = ("train", "val", "test")


def _names_by_class(value, key, yaml_file):
    """``names`` / ``kpt_names`` as {class index: value}: a dict, or a list by class index."""
    if isinstance(value, dict):
        items = value.items()
    elif isinstance(value, list):
        items = enumerate(value)
    else:
        raise ValueError(f"{yaml_file}: {key} {value!r} is not a list or a mapping by class index")
    result = {}
    for index, name in items:
        if not (is_int(index) and index >= 0):
            raise ValueError(f"{yaml_file}: {key} has the class index {index!r}")
        result[index] = name
    return result


def read_yolo_pose_yaml(yaml_file):
    """The dataset yaml, checked: {"root": Path, "splits": {split: [image paths]},
    "class_names": {index: name}, "num_keypoints": K, "ndim": 2 or 3, "flip_idx": list or
    None, "keypoint_names": {class index: [K names]}}."""
    yaml_file = Path(yaml_file)
    try:
        data = yaml.safe_load(yaml_file.read_text())
    except (OSError, yaml.YAMLError) as e:
        raise ValueError(f"{yaml_file}: cannot read it as YAML: {e}") from e
    if not isinstance(data, dict):
        raise ValueError(f"{yaml_file}: expected a mapping (Ultralytics' dataset yaml)")
    shape = data.get("kpt_shape")
    if not (
        isinstance(shape, list)
        and len(shape) == 2
        and all(map(is_int, shape))
        and shape[0] > 0
        and shape[1] in (2, 3)
    ):
        raise ValueError(f"{yaml_file}: kpt_shape {shape!r} is not [K, 2] or [K, 3]")
    num_keypoints, ndim = shape
    if "names" not in data:
        raise ValueError(f"{yaml_file}: has no 'names' (the class names)")
    class_names = _names_by_class(data["names"], "names", yaml_file)
    if sorted(class_names) != list(range(len(class_names))) or not class_names:
        raise ValueError(f"{yaml_file}: names must name the classes 0 to N-1, got {class_names}")
    flip_idx = data.get("flip_idx")
    if flip_idx is not None and not (
        isinstance(flip_idx, list)
        and sorted(flip_idx) == list(range(num_keypoints))
        and all(flip_idx[flip_idx[i]] == i for i in range(num_keypoints))
    ):
        raise ValueError(
            f"{yaml_file}: flip_idx {flip_idx!r} is not a flip of the {num_keypoints} keypoints "
            "(each index once, and i -> j with j -> i)"
        )
    default_names = [f"keypoint_{k}" for k in range(num_keypoints)]
    keypoint_names = {index: default_names for index in class_names}
    if data.get("kpt_names") is not None:
        given = data["kpt_names"]
        by_class = (
            {index: given for index in class_names}
            if isinstance(given, list) and all(isinstance(n, str) for n in given)
            else _names_by_class(given, "kpt_names", yaml_file)
        )
        for index, names in by_class.items():
            if index not in class_names or not (
                isinstance(names, list) and len(names) == num_keypoints
            ):
                raise ValueError(
                    f"{yaml_file}: kpt_names of class {index!r} must be {num_keypoints} names "
                    "of a class of names"
                )
            keypoint_names[index] = [str(name) for name in names]

    root = data.get("path")
    if root is None:
        root = yaml_file.parent
    else:
        root = Path(root)
        if not root.is_absolute():
            beside = yaml_file.parent / root
            root = beside if beside.is_dir() else Path.cwd() / root
    if not root.is_dir():
        raise ValueError(f"{yaml_file}: the dataset root path {data.get('path')!r} is not a folder")
    root = root.resolve()
    splits = {}
    for split in _SPLITS:
        if data.get(split):
            splits[split] = _split_images(data[split], root, f"{yaml_file}: {split}")
    if not splits:
        raise ValueError(f"{yaml_file}: names none of the splits {list(_SPLITS)}")
    return {
        "root": root,
        "splits": splits,
        "class_names": class_names,
        "num_keypoints": num_keypoints,
        "ndim": ndim,
        "flip_idx": flip_idx,
        "keypoint_names": keypoint_names,
    }


def _split_images(value, root, where):
    """The image files of a split entry, as Ultralytics lists them: folders (searched
    recursively) and .txt files of image paths ("./" relative to the .txt file's folder,
    other relative paths to the root)."""
    images = []
    for entry in value if isinstance(value, list) else [value]:
        path = root / entry
        if path.is_dir():
            images.extend(p for p in sorted(path.rglob("*")) if is_image_file(p))
        elif path.is_file() and path.suffix == ".txt":
            for line in path.read_text().splitlines():
                line = line.strip()
                if line:
                    image = path.parent / line[2:] if line.startswith("./") else root / line
                    images.append(image)
        else:
            raise ValueError(f"{where}: {path} is neither a folder nor a .txt list of images")
    if not images:
        raise ValueError(f"{where}: no images ({', '.join(sorted(IMAGE_SUFFIXES))})")
    return images


def label_path(image_path):
    """Ultralytics' label file of an image: the last ``/images/`` of its path replaced by
    ``/labels/``, the suffix by ``.txt``."""
    text = str(image_path)
    images, labels = f"{os.sep}images{os.sep}", f"{os.sep}labels{os.sep}"
    if images in text:
        head, tail = text.rsplit(images, 1)
        text = head + labels + tail
    return Path(os.path.splitext(text)[0] + ".txt")


def image_size(path):
    """(width, height) of an image as shown, from its header (EXIF orientation applied, as
    detectron2's and Ultralytics' readers do)."""
    try:
        with Image.open(path) as image:
            width, height = image.size
            orientation = exif_orientation(image)
    except OSError as e:
        raise ValueError(f"{path}: cannot read it as an image: {e}") from e
    if orientation in TRANSPOSING_ORIENTATIONS:
        width, height = height, width
    return width, height


def _parse_label_line(line, where, num_keypoints, ndim, num_classes):
    values = line.split()
    expected = 5 + num_keypoints * ndim
    if len(values) != expected:
        raise ValueError(
            f"{where}: {len(values)} values; expected {expected} (class cx cy w h, then "
            f"{num_keypoints} keypoints of {ndim} values: kpt_shape [{num_keypoints}, {ndim}])"
        )
    try:
        numbers = [float(v) for v in values]
    except ValueError:
        raise ValueError(f"{where}: {line.strip()!r} has a value that is not a number") from None
    if not all(math.isfinite(v) for v in numbers):
        raise ValueError(f"{where}: a value is not finite")
    label = numbers[0]
    if label != int(label) or not 0 <= label < num_classes:
        raise ValueError(
            f"{where}: class {values[0]!r} is not a class index of names (0 to {num_classes - 1})"
        )
    cx, cy, w, h = numbers[1:5]
    keypoints = [numbers[5 + k * ndim : 5 + (k + 1) * ndim] for k in range(num_keypoints)]
    coordinates = [cx, cy, w, h] + [v for point in keypoints for v in point[:2]]
    if not all(0 <= v <= 1 for v in coordinates) or w <= 0 or h <= 0:
        raise ValueError(
            f"{where}: coordinates must be divided by the image's size (in [0, 1]) and the box "
            f"non-empty: {line.strip()!r}"
        )
    if ndim == 3 and not all(point[2] in (0, 1, 2) for point in keypoints):
        raise ValueError(f"{where}: a visibility is not 0, 1 or 2: {line.strip()!r}")
    return int(label), (cx, cy, w, h), keypoints


def read_labels(label_file, num_keypoints, ndim, num_classes):
    """The objects of a label file: [(class, (cx, cy, w, h), [[x, y(, v)] * K])]; none if the
    file does not exist (an image without objects)."""
    if not label_file.is_file():
        return []
    objects = []
    for number, line in enumerate(label_file.read_text().splitlines(), 1):
        if line.strip():
            where = f"{label_file}, line {number}"
            objects.append(_parse_label_line(line, where, num_keypoints, ndim, num_classes))
    return objects


def _write_json(path, data):
    with atomic_open(path, "w") as f:
        json.dump(data, f)


def yolo_pose_to_coco(yaml_file, output_dir):
    """Write ``output_dir/<split>.json`` for each split of the YOLO-pose dataset
    ``yaml_file``; returns {split: path} and the image root their ``file_name``s are relative
    to (the dataset root). Raises ValueError naming the file and the line of a malformed
    label."""
    dataset = read_yolo_pose_yaml(yaml_file)
    root, num_keypoints, ndim = dataset["root"], dataset["num_keypoints"], dataset["ndim"]
    flip_idx = dataset["flip_idx"]
    categories = []
    for index, name in sorted(dataset["class_names"].items()):
        category = {
            "id": index + 1,
            "name": str(name),
            "supercategory": str(name),
            "keypoints": dataset["keypoint_names"][index],
            "skeleton": [],
        }
        if flip_idx is not None:
            category["flip_pairs"] = [[i + 1, j + 1] for i, j in enumerate(flip_idx) if i < j]
        categories.append(category)
    if flip_idx is None:
        logger.warning(
            f"{yaml_file}: no flip_idx, so the COCO files carry no flip pairs: add flip_idx "
            "to the YAML file and convert again, or give the datasets' "
            "DATASETS.COCO_KEYPOINTS.<name>.FLIP_PAIRS (pairs the names do not show are not "
            "inferred)"
        )
    written = {}
    for split, images in dataset["splits"].items():
        coco = {"images": [], "annotations": [], "categories": categories}
        for image_id, image_file in enumerate(images, 1):
            width, height = image_size(image_file)
            try:
                file_name = str(image_file.resolve().relative_to(root))
            except ValueError:  # outside the root: detectron2 joins an absolute path as it is
                file_name = str(image_file.resolve())
            coco["images"].append(
                {"id": image_id, "file_name": file_name, "width": width, "height": height}
            )
            objects = read_labels(
                label_path(image_file), num_keypoints, ndim, len(dataset["class_names"])
            )
            for label, (cx, cy, w, h), points in objects:
                keypoints = []
                for point in points:
                    x, y = point[0] * width, point[1] * height
                    if ndim == 3:
                        visibility = int(point[2])
                    else:  # (0, 0) is not labelled
                        visibility = 2 if point[0] != 0 or point[1] != 0 else 0
                    keypoints += [round(x, 3), round(y, 3), visibility] if visibility else [0, 0, 0]
                # Clipped to the image, as coco_to_yolo_pose clips; the centre is inside it,
                # so the box keeps an area.
                x0, y0 = max(cx - w / 2, 0) * width, max(cy - h / 2, 0) * height
                x1, y1 = min(cx + w / 2, 1) * width, min(cy + h / 2, 1) * height
                box = [x0, y0, x1 - x0, y1 - y0]
                coco["annotations"].append(
                    {
                        "id": len(coco["annotations"]) + 1,
                        "image_id": image_id,
                        "category_id": label + 1,
                        "bbox": [round(v, 3) for v in box],
                        "area": round(box[2] * box[3], 3),
                        "iscrowd": 0,
                        "num_keypoints": sum(v > 0 for v in keypoints[2::3]),
                        "keypoints": keypoints,
                    }
                )
        path = Path(output_dir) / f"{split}.json"
        _write_json(path, coco)
        logger.info(
            f"{path}: {len(coco['images'])} images, {len(coco['annotations'])} objects of "
            f"{num_keypoints} keypoints"
        )
        written[split] = path
    return written, root


def coco_to_yolo_pose(splits, output_dir):
    """Write a YOLO-pose dataset under ``output_dir`` from COCO keypoint files: ``splits`` is
    {split: (json file, image root)}. Images are linked (symbolic links) from
    ``output_dir/images/<split>/<file name>``, labels written to
    ``output_dir/labels/<split>/``, the
    dataset yaml to ``output_dir/data.yaml`` (returned). Crowd annotations are left out (YOLO
    has none); labelled keypoints outside their image are written as not labelled."""
    output_dir = Path(output_dir).resolve()
    data = {"path": str(output_dir)}
    reference = None
    for split, (json_file, image_root) in splits.items():
        with open(json_file) as f:
            coco = json.load(f)
        categories = sorted(coco["categories"], key=lambda c: c["id"])
        keypoint_set, _ = keypoint_set_from_categories(categories, where=str(json_file))
        names = list(keypoint_set["keypoint_names"])
        described = ([c["name"] for c in categories], names)
        if reference is None:
            reference = described
            index = {name: k for k, name in enumerate(names)}
            flip_idx = list(range(len(names)))
            for a, b in keypoint_set["keypoint_flip_map"]:
                flip_idx[index[a]], flip_idx[index[b]] = index[b], index[a]
            data.update(
                kpt_shape=[len(names), 3],
                flip_idx=flip_idx,
                names={i: c["name"] for i, c in enumerate(categories)},
                kpt_names={i: names for i in range(len(categories))},
            )
        elif described != reference:
            raise ValueError(
                f"{json_file}: its categories and keypoints {described} are not those of the "
                f"first split {reference}: one YOLO dataset has one set of classes and keypoints"
            )
        class_of = {c["id"]: i for i, c in enumerate(categories)}
        annotations = {}
        crowds = 0
        for annotation in coco.get("annotations", []):
            if annotation.get("iscrowd", 0):
                crowds += 1
                continue
            annotations.setdefault(annotation["image_id"], []).append(annotation)
        # Images are linked under their file's name, or, where two share one, under their
        # path with "__" for "/", so that each label file sits where Ultralytics looks.
        basenames = [Path(image["file_name"]).name for image in coco["images"]]
        counts = collections.Counter(basenames)
        for image, basename in zip(coco["images"], basenames):
            source = Path(image_root) / image["file_name"]
            if not source.is_file():
                raise FileNotFoundError(
                    f"{json_file}: image {image['file_name']!r}: {source} does not exist"
                )
            if counts[basename] > 1:
                basename = "__".join(Path(image["file_name"]).parts)
            link = output_dir / "images" / split / basename
            link.parent.mkdir(parents=True, exist_ok=True)
            if link.is_symlink() or link.exists():
                link.unlink()
            link.symlink_to(source.resolve())
            width, height = image["width"], image["height"]
            lines = []
            for annotation in annotations.get(image["id"], []):
                x, y, w, h = annotation["bbox"]
                x0, y0 = max(x, 0), max(y, 0)
                x1, y1 = min(x + w, width), min(y + h, height)
                if x1 <= x0 or y1 <= y0:
                    continue
                box = [
                    (x0 + x1) / 2 / width, (y0 + y1) / 2 / height,
                    (x1 - x0) / width, (y1 - y0) / height,
                ]  # fmt: skip
                fields = [str(class_of[annotation["category_id"]])] + [f"{v:.6f}" for v in box]
                keypoints = annotation["keypoints"]
                for px, py, v in zip(keypoints[0::3], keypoints[1::3], keypoints[2::3]):
                    if v > 0 and 0 <= px <= width and 0 <= py <= height:
                        fields += [f"{px / width:.6f}", f"{py / height:.6f}", str(int(v))]
                    else:
                        fields += ["0", "0", "0"]
                lines.append(" ".join(fields))
            with atomic_open(label_path(link), "w") as f:
                f.write("".join(line + "\n" for line in lines))
        if crowds:
            logger.info(f"{json_file}: {crowds} crowd annotations left out (YOLO has no crowds)")
        data[split] = f"images/{split}"
    path = output_dir / "data.yaml"
    with atomic_open(path, "w") as f:
        yaml.safe_dump(data, f, sort_keys=False)
    return path
