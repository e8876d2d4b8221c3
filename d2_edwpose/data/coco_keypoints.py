"""COCO-format keypoint datasets with any keypoint set, checked when they are loaded.

:func:`register_keypoint_dataset` is detectron2's ``register_coco_instances`` for keypoint
data: it also records the keypoint set in the dataset's metadata (names, left/right flip map,
skeleton, OKS sigmas), which detectron2's flip augmentation (``keypoint_flip_map``), its
``Visualizer`` (``keypoint_connection_rules``), ``COCOEvaluator`` (through
:class:`~d2_edwpose.engine.evaluation.KeypointCOCOEvaluator`, ``keypoint_oks_sigmas``) and the
exports (``keypoint_names``) read. Its loader checks the file before detectron2 converts it,
so that a problem stops a run before its first iteration rather than in the evaluation at its
end, with a message naming the file, the record and the field. A dataset may keep a subset of
its file's categories, or train them all as one class (:mod:`.coco_categories`).

:func:`register_config_datasets` registers the datasets of a config's
``DATASETS.COCO_KEYPOINTS``; one without ``KEYPOINT_SET`` takes the keypoint set of its file's
categories.
"""

import functools
import json
import logging
import os

from pycocotools import mask as mask_util

from detectron2.data import DatasetCatalog, MetadataCatalog
from detectron2.data.datasets import load_coco_json
from detectron2.data.datasets.builtin_meta import COCO_PERSON_KEYPOINT_NAMES

from ..utils.validation import check_config_value, is_finite_number, is_int
from .coco_categories import (
    check_categories,
    keypoint_set_from_categories,
    name_pairs,
    read_categories,
    select_categories,
)
from .keypoint_names import spelling_mismatch
from .keypoint_sets import (
    COCO_PERSON_KEYPOINTS,
    KEYPOINT_SETS,
    read_keypoint_set,
    validate_keypoint_set,
)

__all__ = [
    "complete_coco_annotations",
    "load_coco_keypoint_json",
    "register_config_datasets",
    "register_keypoint_dataset",
]

logger = logging.getLogger(__name__)

# The keys of a DATASETS.COCO_KEYPOINTS entry (config.py describes them); the first two are
# required.
_CONFIG_DATASET_KEYS = (
    "JSON_FILE", "IMAGE_ROOT",
    "KEYPOINT_SET", "FLIP_PAIRS", "OKS_SIGMAS", "CATEGORIES", "ONE_CLASS",
)  # fmt: skip
# KEYPOINT_SET's value (and default) for the keypoint set of the file's categories.
FROM_FILE = "from_file"

# Fields of an image and of an annotation that detectron2's loader or COCO's evaluation cannot
# do without (pycocotools indexes annotations by id; detectron2 reads every image's size).
_IMAGE_FIELDS = ("id", "file_name", "height", "width")
_ANNOTATION_FIELDS = ("id", "image_id", "category_id", "bbox", "keypoints")

# (dataset name, file, modification time, size) of the files checked in this process -> their
# categories: a file is checked, and its missing fields reported, once, however often the
# dataset is loaded.
_checked_files = {}
# (file, modification time, size) -> the categories of the files declared in this process.
_read_categories = {}


def register_keypoint_dataset(
    name,
    json_file,
    image_root,
    *,
    keypoint_names=COCO_PERSON_KEYPOINT_NAMES,
    keypoint_flip_map=None,
    keypoint_connection_rules=None,
    oks_sigmas=None,
    categories=None,
    one_class=None,
):
    """Register a COCO-format keypoint dataset (a ``person_keypoints_*.json`` layout) under
    ``name`` in detectron2's ``DatasetCatalog`` and ``MetadataCatalog``.

    Without keypoint arguments the set is COCO's 17 person keypoints, with COCO's flip map,
    skeleton and sigmas. Another set names its keypoints in the order of the file's
    ``keypoints`` triplets, and then also gives:

    Args:
        keypoint_flip_map: (left, right) name pairs that a horizontal flip swaps (required:
            pass ``()`` for a set without mirror-image keypoints);
        keypoint_connection_rules: (name, name, (r, g, b)) lines that the ``Visualizer``
            draws; default none;
        oks_sigmas: one OKS sigma per keypoint for ``COCOEvaluator`` (required).

    The keypoint set of the file's own categories is
    ``**d2_edwpose.data.keypoint_set_from_file(json_file)``. Whatever the keypoint set:

    Args:
        categories: the names of the file's categories to train and evaluate (default: all),
            in the file's order of ids; the annotations of the others are left out;
        one_class: a class name: the (kept) categories train and evaluate as this one class.

    Registration reads no file; loading the dataset checks it (:func:`load_coco_keypoint_json`).
    ``TEST.KEYPOINT_OKS_SIGMAS`` left empty takes ``oks_sigmas``, and
    ``MODEL.ROI_KEYPOINT_HEAD.NUM_KEYPOINTS`` must be ``len(keypoint_names)``: the trainer
    checks both before training (:func:`d2_edwpose.data.catalog.check_keypoint_datasets`).
    """
    where = f"register_keypoint_dataset({name!r})"
    validate_keypoint_set(keypoint_names, None, None, None, where=where)
    if tuple(keypoint_names) == COCO_PERSON_KEYPOINT_NAMES:
        defaults = COCO_PERSON_KEYPOINTS
        if keypoint_flip_map is None:
            keypoint_flip_map = defaults["keypoint_flip_map"]
        if keypoint_connection_rules is None:
            keypoint_connection_rules = defaults["keypoint_connection_rules"]
        if oks_sigmas is None:
            oks_sigmas = defaults["oks_sigmas"]
    for argument, value, expected in (
        ("keypoint_flip_map", keypoint_flip_map, "the (left, right) pairs a flip swaps, or ()"),
        ("oks_sigmas", oks_sigmas, "one OKS sigma per keypoint (COCOEvaluator needs them)"),
    ):
        if value is None:
            raise ValueError(
                f"{where}: {argument} is required for keypoints {list(keypoint_names)}: {expected}"
            )
    if keypoint_connection_rules is None:
        keypoint_connection_rules = ()
    validate_keypoint_set(
        keypoint_names, keypoint_flip_map, keypoint_connection_rules, oks_sigmas, where=where
    )
    if categories is not None and (
        isinstance(categories, str)
        or not categories
        or not all(isinstance(c, str) and c for c in categories)
    ):
        raise ValueError(f"{where}: categories={categories!r} must list at least one category name")
    if one_class is not None and not (isinstance(one_class, str) and one_class):
        raise ValueError(f"{where}: one_class={one_class!r} must be a class name")
    json_file, image_root = os.fspath(json_file), os.fspath(image_root)
    DatasetCatalog.register(
        name, functools.partial(load_coco_keypoint_json, json_file, image_root, name)
    )
    # Tuples, as in detectron2's builtin metadata: detectron2 requires the names and the flip
    # map of the datasets trained together to compare equal.
    MetadataCatalog.get(name).set(
        json_file=json_file,
        image_root=image_root,
        evaluator_type="coco",
        keypoint_names=tuple(keypoint_names),
        keypoint_flip_map=tuple(tuple(pair) for pair in keypoint_flip_map),
        keypoint_connection_rules=[(a, b, tuple(c)) for a, b, c in keypoint_connection_rules],
        keypoint_oks_sigmas=[float(s) for s in oks_sigmas],
    )
    if categories is not None:
        MetadataCatalog.get(name).selected_categories = tuple(categories)
    if one_class is not None:
        MetadataCatalog.get(name).one_class = one_class


def category_selection(dataset_name, categories):
    """The :class:`~.coco_categories.CategorySelection` of a dataset of
    :func:`register_keypoint_dataset` whose file has ``categories``."""
    metadata = MetadataCatalog.get(dataset_name)
    return select_categories(
        categories,
        metadata.get("selected_categories"),
        metadata.get("one_class"),
        where=f"Dataset '{dataset_name}'",
    )


def _segmentation_area(segmentation, height, width):
    """pycocotools' pixel area of a polygon list or an RLE; None for no usable segmentation."""
    if isinstance(segmentation, list):
        polygons = [p for p in segmentation if len(p) >= 6]
        if not polygons:
            return None
        rles = mask_util.frPyObjects(polygons, height, width)
        return float(mask_util.area(mask_util.merge(rles)))
    if isinstance(segmentation, dict) and "counts" in segmentation:
        rle = segmentation
        if isinstance(rle["counts"], list):  # uncompressed RLE
            rle = mask_util.frPyObjects(rle, *rle["size"])
        return float(mask_util.area(rle))
    return None


def _missing_fields(annotation):
    return [
        field
        for field in ("area", "iscrowd", "num_keypoints")
        if field not in annotation
        and not (field == "num_keypoints" and "keypoints" not in annotation)
    ]


def complete_coco_annotations(coco):
    """Fill, in place, the annotation fields that COCO keypoint evaluation needs and that
    keypoint-only COCO-format files (CrowdPose's, many converted sets) leave out, by the rules
    of detectron2's ``convert_to_coco_dict``:

    * ``area``: of the segmentation when there is one (pycocotools' mask area, as COCO's own
      areas), else of the box;
    * ``iscrowd``: 0;
    * ``num_keypoints``: the number of labelled keypoints (v > 0).

    Returns:
        dict[str, int]: how many annotations got each field.
    """
    sizes = {image["id"]: (image["height"], image["width"]) for image in coco.get("images", [])}
    filled = {"area": 0, "iscrowd": 0, "num_keypoints": 0}
    for annotation in coco.get("annotations", []):
        for field in _missing_fields(annotation):
            if field == "area":
                area = None
                if "segmentation" in annotation:
                    size = sizes[annotation["image_id"]]
                    area = _segmentation_area(annotation["segmentation"], *size)
                if area is None:
                    area = float(annotation["bbox"][2] * annotation["bbox"][3])
                annotation["area"] = area
            elif field == "iscrowd":
                annotation["iscrowd"] = 0
            else:
                annotation["num_keypoints"] = sum(v > 0 for v in annotation["keypoints"][2::3])
            filled[field] += 1
    return filled


def _check_images(images):
    """The file's images by id, each with the fields detectron2 reads and a positive size."""
    by_id = {}
    for index, image in enumerate(images):
        missing = [field for field in _IMAGE_FIELDS if field not in image]
        if missing:
            raise ValueError(
                f"images[{index}] has no {missing}; every image needs {list(_IMAGE_FIELDS)}"
            )
        if image["id"] in by_id:
            raise ValueError(f"images[{index}]: image id {image['id']!r} appears twice")
        if not all(is_int(image[side]) and image[side] > 0 for side in ("height", "width")):
            raise ValueError(
                f"images[{index}] (id {image['id']}): height {image['height']!r} and width "
                f"{image['width']!r} must be positive integers"
            )
        by_id[image["id"]] = image
    return by_id


def _check_category_keypoints(categories, kept, keypoint_names, dataset_name):
    """The kept categories name the registered keypoints, in their order (spelling aside)."""
    for category in categories:
        names = category.get("keypoints")
        if names is None or category["id"] not in kept:
            continue
        mismatch = spelling_mismatch(names, keypoint_names)
        if mismatch is not None:
            raise ValueError(
                f"category {category['name']!r} names the keypoints {list(names)}, but the "
                f"dataset is registered with keypoint_names={list(keypoint_names)} ({mismatch}): "
                "leave KEYPOINT_SET out to take the file's keypoint set, or register it with "
                "the file's keypoints, in its order"
            )
        if list(names) != list(keypoint_names):
            logger.info(
                f"Dataset '{dataset_name}': category {category['name']!r} spells the keypoints "
                f"{list(names)}; they are the registered {list(keypoint_names)}"
            )


def _check_annotation(index, annotation, images, category_ids, kept, keypoint_names):
    """One annotation: its fields, a positive id, an image and a category of the file, a box,
    and, in a kept category, one (x, y, visibility) triplet per registered keypoint."""
    num_keypoints = len(keypoint_names)
    record = f"annotations[{index}]" + (f" (id {annotation['id']})" if "id" in annotation else "")
    missing = [
        field
        for field in _ANNOTATION_FIELDS
        if field not in annotation
        and not (field == "keypoints" and annotation.get("category_id") not in kept)
    ]
    if missing:
        raise ValueError(
            f"{record} has no {missing}; every annotation needs {list(_ANNOTATION_FIELDS)} "
            f"(a person or crowd without labelled keypoints has {num_keypoints} x [0, 0, 0])"
        )
    # COCOeval records a match by the ground truth's id and counts ids > 0 as matched.
    if not (is_int(annotation["id"]) and annotation["id"] > 0):
        raise ValueError(
            f"{record}: annotation ids must be positive integers (COCO's evaluation takes a "
            "match with id 0 for none)"
        )
    if annotation["image_id"] not in images:
        raise ValueError(
            f"{record}: image_id {annotation['image_id']!r} is not the id of an image of the file"
        )
    if annotation["category_id"] not in category_ids:
        raise ValueError(
            f"{record}: category_id {annotation['category_id']!r} is not the id of a "
            "category of the file"
        )
    bbox = annotation["bbox"]
    if not (isinstance(bbox, list) and len(bbox) == 4 and all(map(is_finite_number, bbox))):
        raise ValueError(f"{record}: bbox {bbox!r} is not [x, y, width, height]")
    if annotation["category_id"] in kept and len(annotation["keypoints"]) != 3 * num_keypoints:
        raise ValueError(
            f"{record} has {len(annotation['keypoints'])} keypoint values; the dataset's "
            f"{num_keypoints} keypoints ({list(keypoint_names)}) need {3 * num_keypoints} "
            "(x, y, visibility)"
        )


def _check_coco_keypoint_file(coco, keypoint_names, dataset_name):
    """Raise ValueError naming the record and the field for what detectron2's loader or COCO's
    evaluation would fail on later, or would silently misread. Annotations of categories the
    dataset leaves out need no keypoints."""
    if not isinstance(coco, dict) or not all(
        isinstance(coco.get(k), list) for k in ("images", "categories")
    ):
        raise ValueError("expected a COCO-format object with 'images' and 'categories' lists")
    images = _check_images(coco["images"])
    check_categories(coco["categories"])
    category_ids = {category["id"] for category in coco["categories"]}
    kept = category_selection(dataset_name, coco["categories"]).contiguous_id
    _check_category_keypoints(coco["categories"], kept, keypoint_names, dataset_name)
    # A test set without annotations (COCO's test-dev layout) loads; detectron2 then only
    # writes the predictions.
    annotation_ids = set()
    for index, annotation in enumerate(coco.get("annotations", [])):
        _check_annotation(index, annotation, images, category_ids, kept, keypoint_names)
        if annotation["id"] in annotation_ids:
            raise ValueError(
                f"annotations[{index}] (id {annotation['id']}): annotation id "
                f"{annotation['id']!r} appears twice"
            )
        annotation_ids.add(annotation["id"])


def load_coco_keypoint_json(json_file, image_root, dataset_name):
    """detectron2's ``load_coco_json`` for a dataset of :func:`register_keypoint_dataset`,
    after checking the file against the dataset's keypoint set (an error names the file, the
    record and the field) and warning about the fields that evaluation fills in
    (:func:`complete_coco_annotations`). The check reads the file once per process (a second
    parse besides pycocotools' in ``load_coco_json``); later loads of an unchanged file skip it.

    The annotations are those of the dataset's categories (all, or those it keeps), labelled
    with their class; the metadata's ``thing_classes`` and ``thing_dataset_id_to_contiguous_id``
    are set as ``load_coco_json`` sets them for all categories.
    """
    if not os.path.isfile(json_file):
        raise FileNotFoundError(
            f"Dataset '{dataset_name}': annotation file {json_file} does not exist"
        )
    stat = os.stat(json_file)
    checked = (dataset_name, os.path.abspath(json_file), stat.st_mtime_ns, stat.st_size)
    if checked not in _checked_files:
        try:
            with open(json_file) as f:
                coco = json.load(f)
        except (OSError, ValueError) as e:
            raise ValueError(
                f"Dataset '{dataset_name}': cannot read {json_file} as JSON: {e}"
            ) from e
        try:
            _check_coco_keypoint_file(
                coco, MetadataCatalog.get(dataset_name).keypoint_names, dataset_name
            )
        except ValueError as e:
            raise ValueError(f"Dataset '{dataset_name}': {json_file}: {e}") from None
        missing = {}
        for annotation in coco.get("annotations", []):
            for field in _missing_fields(annotation):
                missing[field] = missing.get(field, 0) + 1
        if missing:
            logger.warning(
                f"Dataset '{dataset_name}' ({json_file}): "
                + ", ".join(
                    f"{count} annotations have no '{field}'" for field, count in missing.items()
                )
                + "; evaluation fills them in as detectron2's convert_to_coco_dict does (area: "
                "of the segmentation, else of the box; iscrowd: 0; num_keypoints: the labelled "
                "keypoints)."
            )
        _checked_files[checked] = coco["categories"]
    selection = category_selection(dataset_name, _checked_files[checked])
    metadata = MetadataCatalog.get(dataset_name)
    metadata.thing_classes = selection.thing_classes
    metadata.thing_dataset_id_to_contiguous_id = selection.dataset_id_to_contiguous_id
    # Without a dataset name, load_coco_json keeps the file's category ids, which the
    # selection maps to classes.
    return selection.apply_to_records(load_coco_json(json_file, image_root))


def _register_without_keypoints(name, json_file, image_root):
    """Register a dataset whose file, which would give its keypoint set, does not exist: the
    checks of a run that uses it name the missing file (verify_dataset_files), and loading it
    fails on it; a run that does not use it is unaffected."""
    DatasetCatalog.register(
        name, functools.partial(load_coco_keypoint_json, json_file, image_root, name)
    )
    MetadataCatalog.get(name).set(json_file=json_file, image_root=image_root, evaluator_type="coco")


def _registered_without_keypoints(name, json_file, image_root):
    """Whether ``name`` is the registration of :func:`_register_without_keypoints` of these
    files."""
    metadata = MetadataCatalog.get(name)
    return (
        metadata.get("keypoint_names") is None
        and metadata.get("json_file") == json_file
        and metadata.get("image_root") == image_root
    )


def register_config_datasets(cfg):
    """Register the datasets that ``cfg.DATASETS.COCO_KEYPOINTS`` declares, each with
    :func:`register_keypoint_dataset`, so that ``train_net.py``, the demo, the export tool and
    the benchmark's dataset mode run on a user's COCO-format data from the config alone::

        DATASETS:
          COCO_KEYPOINTS:
            my_train: {JSON_FILE: "datasets/mine/train.json", IMAGE_ROOT: "datasets/mine/images"}
          TRAIN: ("my_train",)

    An entry without ``KEYPOINT_SET`` (or with ``"from_file"``) takes the keypoint set of its
    file's categories (:func:`~.coco_categories.keypoint_set_from_categories`; this reads the
    file, once per process, and logs where each part came from); ``FLIP_PAIRS``,
    ``OKS_SIGMAS``, ``CATEGORIES`` and ``ONE_CLASS`` are described in ``config.py``.

    Paths are as given (relative ones: to the working directory). A name registered before
    with the same files and keypoints is left as it is; with others it is an error
    (detectron2's catalogs hold one dataset per name)."""
    for name, entry in cfg.DATASETS.COCO_KEYPOINTS.items():
        key = f"DATASETS.COCO_KEYPOINTS.{name}"
        check_config_value(
            key,
            entry,
            isinstance(entry, dict)
            and set(entry) <= set(_CONFIG_DATASET_KEYS)
            and all(isinstance(entry.get(k), str) and entry[k] for k in _CONFIG_DATASET_KEYS[:2]),
            "{JSON_FILE: path, IMAGE_ROOT: path} and optionally "
            + ", ".join(_CONFIG_DATASET_KEYS[2:]),
        )
        json_file, image_root = entry["JSON_FILE"], entry["IMAGE_ROOT"]
        keypoint_set_key = f"{key}.KEYPOINT_SET"
        keypoint_set = entry.get("KEYPOINT_SET", FROM_FILE)
        check_config_value(
            keypoint_set_key,
            keypoint_set,
            isinstance(keypoint_set, str),
            f"{FROM_FILE!r} (the default), one of {sorted(KEYPOINT_SETS)} or a .json file",
        )
        options = dict(categories=entry.get("CATEGORIES"), one_class=entry.get("ONE_CLASS"))
        registered = name in DatasetCatalog.list()
        if keypoint_set == FROM_FILE and not os.path.isfile(json_file):
            if registered:
                _check_registered_again(name, key, entry, options, None)
            else:
                _register_without_keypoints(name, json_file, image_root)
            continue
        flip_pairs, oks_sigmas = entry.get("FLIP_PAIRS"), entry.get("OKS_SIGMAS")
        categories = summary = None
        if keypoint_set == FROM_FILE:
            categories = _read_categories_once(json_file, where=key)
            arguments, summary = keypoint_set_from_categories(
                categories,
                selected=options["categories"],
                flip_pairs=flip_pairs,
                oks_sigmas=oks_sigmas,
                where=key,
                keys={"flip_pairs": f"{key}.FLIP_PAIRS", "oks_sigmas": f"{key}.OKS_SIGMAS"},
            )
        else:
            arguments = dict(read_keypoint_set(keypoint_set, keypoint_set_key))
            if flip_pairs is not None:
                arguments["keypoint_flip_map"] = name_pairs(
                    flip_pairs, arguments["keypoint_names"], key=f"{key}.FLIP_PAIRS"
                )
            if oks_sigmas is not None:
                arguments["oks_sigmas"] = oks_sigmas
        if registered and _registered_without_keypoints(name, json_file, image_root):
            DatasetCatalog.remove(name)  # its file exists now
            MetadataCatalog.remove(name)
        elif registered:
            _check_registered_again(name, key, entry, options, arguments)
            continue
        if summary is not None:
            logger.info(f"Dataset '{name}' ({json_file}): {summary}")
        try:
            register_keypoint_dataset(name, json_file, image_root, **arguments, **options)
        except ValueError as e:
            where = key if keypoint_set == FROM_FILE else f"{keypoint_set_key}={keypoint_set!r}"
            raise ValueError(f"{where}: {e}") from None
        if categories is not None:  # the classes too are known before the dataset loads
            selection = category_selection(name, categories)
            MetadataCatalog.get(name).set(
                thing_classes=selection.thing_classes,
                thing_dataset_id_to_contiguous_id=selection.dataset_id_to_contiguous_id,
            )


def _read_categories_once(json_file, *, where):
    """:func:`~.coco_categories.read_categories`, parsing an unchanged file once per process
    however often its declaration is registered."""
    stat = os.stat(json_file)
    read = (os.path.abspath(json_file), stat.st_mtime_ns, stat.st_size)
    if read not in _read_categories:
        _read_categories[read] = read_categories(json_file, where=where)
    return _read_categories[read]


def _check_registered_again(name, key, entry, options, arguments):
    """Raise ValueError unless the dataset ``name``, registered before, was registered from
    the same declaration: files, categories, and the keypoint set it resolves to now
    (``arguments``: names, flip pairs, OKS sigmas; None for a file that does not exist)."""
    metadata = MetadataCatalog.get(name)
    registered = [metadata.get(k) for k in ("json_file", "image_root")]
    same = registered == [entry["JSON_FILE"], entry["IMAGE_ROOT"]]
    same &= metadata.get("selected_categories") == (
        tuple(options["categories"]) if options["categories"] is not None else None
    )
    same &= metadata.get("one_class") == options["one_class"]
    if arguments is not None:
        same &= metadata.get("keypoint_names") == tuple(arguments["keypoint_names"])
        same &= metadata.get("keypoint_flip_map") == tuple(
            tuple(pair) for pair in arguments["keypoint_flip_map"]
        )
        same &= metadata.get("keypoint_oks_sigmas") == [float(s) for s in arguments["oks_sigmas"]]
    if not same:
        raise ValueError(
            f"{key}: dataset '{name}' is already registered with other files, keypoints, flip "
            f"pairs, OKS sigmas or categories (json_file={registered[0]!r}): give the config's "
            "dataset another name"
        )
