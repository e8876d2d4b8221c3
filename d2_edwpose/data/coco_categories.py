"""What a COCO keypoint file's ``categories`` say: the keypoint set (names, skeleton, flip
pairs, OKS sigmas) that a dataset registered without one takes, and the classes it trains and
evaluates (all categories, a subset, or all of them as one class).

The keypoint set of a file (:func:`keypoint_set_from_categories`):

* names: the ``keypoints`` of its categories (those kept, which must all list the same);
* skeleton: the ``skeleton`` of the first of them (COCO's 1-based index pairs);
* flip pairs: given ones, else the category's ``flip_pairs`` (1-based index pairs, as
  ``tools.convert_dataset`` writes them), else those of the known set the names are
  (:func:`~d2_edwpose.data.keypoint_sets.known_keypoint_set`), else inferred from the names
  (:func:`~d2_edwpose.data.keypoint_names.infer_flip_map`). An inferred map that is empty,
  leaves a sided name unpaired, or maps a limb of the skeleton onto no limb, is refused;
* OKS sigmas: given ones, else the known set's, else :data:`DEFAULT_OKS_SIGMA` for every
  keypoint, with a warning.
"""

import json
import logging

from ..utils.validation import is_int
from .keypoint_names import asymmetric_limbs, infer_flip_map, normalized_name
from .keypoint_sets import (
    DEFAULT_OKS_SIGMA,
    KEYPOINT_SETS,
    known_keypoint_set,
    side_colored_rules,
    validate_keypoint_set,
)

__all__ = [
    "CategorySelection",
    "check_categories",
    "keypoint_set_from_categories",
    "keypoint_set_from_file",
    "name_pairs",
    "read_categories",
    "select_categories",
]

logger = logging.getLogger(__name__)

# The category id of the one class of a dataset trained as one, in the ground truth that
# KeypointCOCOEvaluator scores.
ONE_CLASS_ID = 1


def read_categories(json_file, *, where):
    """The ``categories`` list of a COCO-format file (parsing it whole: JSON has no index)."""
    try:
        with open(json_file) as f:
            coco = json.load(f)
    except (OSError, ValueError) as e:
        raise ValueError(f"{where}: cannot read {json_file} as JSON: {e}") from e
    categories = coco.get("categories") if isinstance(coco, dict) else None
    if not isinstance(categories, list):
        raise ValueError(f"{where}: {json_file} has no 'categories' list (COCO format)")
    try:
        check_categories(categories)
    except ValueError as e:
        raise ValueError(f"{where}: {json_file}: {e}") from None
    return categories


def check_categories(categories):
    """Raise ValueError unless every category has an ``id`` and a ``name``."""
    for index, category in enumerate(categories):
        if not isinstance(category, dict) or "id" not in category or "name" not in category:
            raise ValueError(f"categories[{index}] needs an 'id' and a 'name'")


class CategorySelection:
    """The classes a dataset trains as, from its file's categories.

    Attributes:
        thing_classes (list[str]): the class names (detectron2's metadata).
        contiguous_id (dict): file category id -> class index, for the kept categories.
        evaluation_categories (list[dict]): the ground truth's categories for COCOEvaluator.
        evaluation_id (dict): file category id -> category id in that ground truth.
        dataset_id_to_contiguous_id (dict): ground-truth category id -> class index
            (detectron2's ``thing_dataset_id_to_contiguous_id``, one to one).
    """

    def __init__(self, categories, selected=None, one_class=None, *, where):
        by_id = sorted(categories, key=lambda c: c["id"])  # detectron2's order
        if selected is None:
            kept = by_id
        else:
            names = [c["name"] for c in by_id]
            unknown = [name for name in selected if name not in names]
            if not selected:
                raise ValueError(
                    f"{where}: the categories to keep must list at least one category of the "
                    f"file's {names}"
                )
            if unknown:
                raise ValueError(
                    f"{where}: the categories to keep, {list(selected)}, must be names of the "
                    f"file's categories {names}; unknown: {unknown}"
                )
            kept = [c for c in by_id if c["name"] in set(selected)]
        if not kept:
            raise ValueError(f"{where}: the file has no categories")
        if one_class is None:
            self.thing_classes = [c["name"] for c in kept]
            self.contiguous_id = {c["id"]: i for i, c in enumerate(kept)}
            self.evaluation_categories = kept
            self.evaluation_id = {c["id"]: c["id"] for c in kept}
        else:
            self.thing_classes = [one_class]
            self.contiguous_id = {c["id"]: 0 for c in kept}
            self.evaluation_categories = [
                {**kept[0], "id": ONE_CLASS_ID, "name": one_class, "supercategory": one_class}
            ]
            self.evaluation_id = {c["id"]: ONE_CLASS_ID for c in kept}
        self.kept = kept
        self.dataset_id_to_contiguous_id = {
            self.evaluation_id[c["id"]]: self.contiguous_id[c["id"]] for c in kept
        }

    def apply_to_records(self, dataset_dicts):
        """Keep, in detectron2 dataset dicts loaded without a dataset name (file category
        ids), the annotations of kept categories, with their class index as category_id."""
        for record in dataset_dicts:
            annotations = [
                a for a in record.get("annotations", []) if a["category_id"] in self.contiguous_id
            ]
            for annotation in annotations:
                annotation["category_id"] = self.contiguous_id[annotation["category_id"]]
            record["annotations"] = annotations
        return dataset_dicts

    def apply_to_ground_truth(self, coco):
        """Rewrite, in place, a COCO-format dict to the kept categories (or the one class),
        so that COCOeval scores the classes the model predicts."""
        coco["categories"] = [dict(c) for c in self.evaluation_categories]
        annotations = [
            a for a in coco.get("annotations", []) if a["category_id"] in self.evaluation_id
        ]
        for annotation in annotations:
            annotation["category_id"] = self.evaluation_id[annotation["category_id"]]
        if "annotations" in coco:
            coco["annotations"] = annotations


def select_categories(categories, selected=None, one_class=None, *, where):
    """The :class:`CategorySelection` of ``categories`` (a COCO file's) that keeps the
    categories named in ``selected`` (all if None), as one class named ``one_class`` if
    given."""
    return CategorySelection(categories, selected, one_class, where=where)


def name_pairs(pairs, keypoint_names, *, key):
    """``pairs`` of keypoint names (any spelling of ``keypoint_names``) as names of the set."""
    by_form = {normalized_name(name): name for name in keypoint_names}
    resolved = []
    for pair in pairs:
        if (
            not isinstance(pair, (list, tuple))
            or len(pair) != 2
            or not all(isinstance(n, str) and normalized_name(n) in by_form for n in pair)
        ):
            raise ValueError(
                f"{key}: entry {pair!r} is not a pair of names of the keypoints "
                f"{list(keypoint_names)}"
            )
        resolved.append(tuple(by_form[normalized_name(n)] for n in pair))
    return tuple(resolved)


def _index_pairs(pairs, keypoint_names, *, field, where):
    """COCO-style 1-based index ``pairs`` (a ``skeleton`` or ``flip_pairs``) as name pairs. An
    index 0 is an error: a list that has one may be 0-based throughout, or 1-based with a
    typo, and which it is cannot be told."""
    count = len(keypoint_names)
    if not isinstance(pairs, list) or not all(
        isinstance(p, (list, tuple)) and len(p) == 2 and all(map(is_int, p)) for p in pairs
    ):
        raise ValueError(f"{where}: {field} {pairs!r} is not a list of index pairs [i, j]")
    for pair in pairs:
        if 0 in pair:
            raise ValueError(
                f"{where}: {field} entry {list(pair)} has the index 0: COCO's {field} indices "
                f"are 1-based (1 is the first keypoint, {count} the last); write the list with "
                "1-based indices"
            )
        if not all(1 <= i <= count for i in pair) or pair[0] == pair[1]:
            raise ValueError(
                f"{where}: {field} entry {list(pair)} is not a pair of two different keypoint "
                f"indices from 1 to {count}"
            )
    return tuple((keypoint_names[a - 1], keypoint_names[b - 1]) for a, b in pairs)


def keypoint_set_from_categories(
    categories, *, selected=None, flip_pairs=None, oks_sigmas=None, where, keys=None
):
    """The keyword arguments of :func:`~d2_edwpose.data.register_keypoint_dataset` that the
    file's categories give (the rules of this module's docstring), and a one-line summary of
    where each part came from.

    Args:
        categories (list[dict]): the file's ``categories``.
        selected (list[str] or None): the names of the categories to keep (all if None).
        flip_pairs (list or None): (left, right) name pairs that replace the file's or the
            inferred ones; ``[]`` for none.
        oks_sigmas (list or None): one sigma per keypoint.
        where (str): what the file is, for the messages.
        keys (dict or None): the names of ``flip_pairs`` and ``oks_sigmas`` in messages (a
            config's: ``{"flip_pairs": "DATASETS.COCO_KEYPOINTS.x.FLIP_PAIRS", ...}``).
    """
    keys = {"flip_pairs": "flip_pairs", "oks_sigmas": "oks_sigmas", **(keys or {})}
    kept = select_categories(categories, selected, where=where).kept
    with_keypoints = [c for c in kept if c.get("keypoints")]
    if not with_keypoints:
        raise ValueError(
            f"{where}: no category {[c['name'] for c in kept]} lists its keypoints "
            "(categories[].keypoints), so the keypoint set cannot come from the file: give "
            f"KEYPOINT_SET (one of {sorted(KEYPOINT_SETS)} or a .json file)"
        )
    first = with_keypoints[0]
    names = first["keypoints"]
    validate_keypoint_set(names, None, None, None, where=f"{where}: category {first['name']!r}")
    names = tuple(names)
    others = [c["name"] for c in with_keypoints if tuple(c["keypoints"]) != names]
    if others:
        raise ValueError(
            f"{where}: categories {others} name other keypoints than category "
            f"{first['name']!r} ({list(names)}): one model has one keypoint set; keep the "
            "categories of one set with CATEGORIES"
        )
    category = f"category {first['name']!r}"
    limbs = ()
    if first.get("skeleton"):
        limbs = _index_pairs(
            first["skeleton"], names, field="skeleton", where=f"{where}: {category}"
        )
    known_name, known = known_keypoint_set(names)

    def by_position(pairs):  # a known set's name pairs, in the file's names
        index = {name: i for i, name in enumerate(known["keypoint_names"])}
        return tuple((names[index[a]], names[index[b]]) for a, b in pairs)

    inferred = False
    if flip_pairs is not None:
        flip_map, flip_source = name_pairs(flip_pairs, names, key=keys["flip_pairs"]), "given"
    elif first.get("flip_pairs") is not None:
        flip_map = _index_pairs(
            first["flip_pairs"], names, field="flip_pairs", where=f"{where}: {category}"
        )
        flip_source = f"the file's {category}"
    elif known is not None:
        flip_map, flip_source = by_position(known["keypoint_flip_map"]), f"{known_name}'s"
    else:
        found = infer_flip_map(names)
        if found.unpaired:
            raise ValueError(
                f"{where}: the keypoints {list(found.unpaired)} name a side (left/right, "
                "L/R) but no keypoint is the mirror twin of each, so the flip pairs cannot be "
                f"inferred from the names {list(names)}: give {keys['flip_pairs']} as [[left, "
                "right], ...] ([] for none)"
            )
        if not found.pairs:
            # Names such as LHIP or keypoint_3 hide their sides: an empty map would let a
            # horizontal flip keep left keypoints labelled left.
            raise ValueError(
                f"{where}: no flip pairs are given and none can be inferred from the names "
                f"{list(names)}: give {keys['flip_pairs']} as [[left, right], ...], or [] to "
                "confirm that no two keypoints are mirror twins"
            )
        flip_map, flip_source, inferred = found.pairs, "inferred from the names", True
    asymmetric = asymmetric_limbs(limbs, flip_map)
    if asymmetric:
        message = (
            f"{where}: the flip pairs ({flip_source}: {[list(p) for p in flip_map]}) map the "
            f"limbs {[list(limb) for limb in asymmetric]} of the skeleton onto no limb: "
            "a keypoint and its mirror twin are not paired, or the skeleton is not symmetric"
        )
        if inferred:
            raise ValueError(f"{message}; give {keys['flip_pairs']} as [[left, right], ...]")
        logger.warning(message)

    # Limbs of a known set keep its colours; the others are coloured by side.
    known_colors = {}
    skeleton_source = "the file's" if limbs else "none"
    if known is not None:
        known_rules = known["keypoint_connection_rules"]
        known_limbs = by_position(rule[:2] for rule in known_rules)
        known_colors = {frozenset(limb): rule[2] for limb, rule in zip(known_limbs, known_rules)}
        if not limbs:
            limbs, skeleton_source = known_limbs, f"{known_name}'s"
    rules = tuple(
        (a, b, known_colors.get(frozenset((a, b)), color))
        for a, b, color in side_colored_rules(names, flip_map, limbs)
    )
    if oks_sigmas is not None:
        sigmas, sigma_source = tuple(oks_sigmas), "given"
    elif known is not None:
        sigmas, sigma_source = tuple(known["oks_sigmas"]), f"{known_name}'s"
    else:
        sigmas, sigma_source = (DEFAULT_OKS_SIGMA,) * len(names), f"{DEFAULT_OKS_SIGMA} each"
        logger.warning(
            f"{where}: the keypoint names {list(names)} are none of the known sets "
            f"({', '.join(KEYPOINT_SETS)}), and no OKS sigmas are given: COCO's keypoint AP is "
            f"computed with the sigma {DEFAULT_OKS_SIGMA} (the mean of COCO's person sigmas) "
            "for every keypoint, one tolerance for all. It compares models on this dataset; "
            "it is not the AP that per-keypoint sigmas would give, nor comparable with AP "
            f"published for other sets. Give {keys['oks_sigmas']} (one per keypoint) to change it."
        )
    arguments = dict(
        keypoint_names=names,
        keypoint_flip_map=flip_map,
        keypoint_connection_rules=rules,
        oks_sigmas=sigmas,
    )
    validate_keypoint_set(
        names, flip_map, rules, sigmas, where=f"{where}: the keypoint set of {category}"
    )
    summary = (
        f"{len(names)} keypoints {list(names)} from {category}"
        + (f" (the names of {known_name})" if known_name else "")
        + f"; flip pairs {flip_source}: {[list(p) for p in flip_map]}; skeleton "
        f"{skeleton_source}: {len(limbs)} limbs; OKS sigmas: {sigma_source}"
    )
    return arguments, summary


def keypoint_set_from_file(json_file, **kwargs):
    """:func:`keypoint_set_from_categories` of a COCO file (its keyword arguments; ``where``
    defaults to the file). Returns the register_keypoint_dataset keyword arguments only::

        register_keypoint_dataset(
            "mine", "mine.json", "images/", **keypoint_set_from_file("mine.json")
        )
    """
    where = kwargs.pop("where", str(json_file))
    arguments, summary = keypoint_set_from_categories(
        read_categories(json_file, where=where), where=where, **kwargs
    )
    logger.info(f"{where}: {summary}")
    return arguments
