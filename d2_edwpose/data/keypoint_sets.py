"""Keypoint sets: the names of a dataset's keypoints with what a horizontal flip swaps, the
skeleton the ``Visualizer`` draws and COCO evaluation's OKS sigmas; COCO's and CrowdPose's,
their checks, and the ones a config names."""

import json
import math

from detectron2.data.datasets.builtin_meta import (
    COCO_PERSON_KEYPOINT_FLIP_MAP,
    COCO_PERSON_KEYPOINT_NAMES,
    KEYPOINT_CONNECTION_RULES,
)

__all__ = [
    "COCO_PERSON_KEYPOINTS",
    "COCO_PERSON_OKS_SIGMAS",
    "CROWDPOSE_KEYPOINTS",
    "KEYPOINT_SETS",
    "read_keypoint_set",
    "validate_keypoint_set",
]

# COCO's per-keypoint OKS sigmas, as pycocotools' COCOeval has them.
COCO_PERSON_OKS_SIGMAS = (
    0.026, 0.025, 0.025, 0.035, 0.035, 0.079, 0.079, 0.072, 0.072, 0.062, 0.062,
    0.107, 0.107, 0.087, 0.087, 0.089, 0.089,
)  # fmt: skip

# The keyword arguments of register_keypoint_dataset for two common keypoint sets.
COCO_PERSON_KEYPOINTS = dict(
    keypoint_names=COCO_PERSON_KEYPOINT_NAMES,
    keypoint_flip_map=COCO_PERSON_KEYPOINT_FLIP_MAP,
    keypoint_connection_rules=KEYPOINT_CONNECTION_RULES,
    oks_sigmas=COCO_PERSON_OKS_SIGMAS,
)
_CROWDPOSE_NAMES = (
    "left_shoulder", "right_shoulder", "left_elbow", "right_elbow", "left_wrist", "right_wrist",
    "left_hip", "right_hip", "left_knee", "right_knee", "left_ankle", "right_ankle",
    "head", "neck",
)  # fmt: skip
CROWDPOSE_KEYPOINTS = dict(
    keypoint_names=_CROWDPOSE_NAMES,
    keypoint_flip_map=tuple(
        (name, "right_" + name[len("left_"):])
        for name in _CROWDPOSE_NAMES
        if name.startswith("left_")
    ),
    # COCO's limbs and colours, with the head joined to the neck and the neck to the shoulders.
    keypoint_connection_rules=tuple(
        rule for rule in KEYPOINT_CONNECTION_RULES if {rule[0], rule[1]} <= set(_CROWDPOSE_NAMES)
    )
    + (
        ("head", "neck", (102, 0, 204)),
        ("neck", "left_shoulder", (0, 215, 255)),
        ("neck", "right_shoulder", (0, 215, 255)),
    ),
    # CrowdPose's evaluation (crowdposetools) sigmas.
    oks_sigmas=(
        0.079, 0.079, 0.072, 0.072, 0.062, 0.062, 0.107, 0.107, 0.087, 0.087, 0.089, 0.089,
        0.079, 0.079,
    ),
)  # fmt: skip

# The keypoint sets that DATASETS.COCO_KEYPOINTS.<name>.KEYPOINT_SET names.
KEYPOINT_SETS = {"coco_person": COCO_PERSON_KEYPOINTS, "crowdpose": CROWDPOSE_KEYPOINTS}
_KEYPOINT_SET_FIELDS = tuple(COCO_PERSON_KEYPOINTS)


def is_finite_number(value):
    """A finite int or float; not a bool, which JSON and Python would let pass as 0 or 1."""
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def validate_keypoint_set(
    keypoint_names, keypoint_flip_map, keypoint_connection_rules, oks_sigmas, *, where
):
    """Raise ValueError, naming ``where`` and the offending value, unless the keypoint set is
    consistent: distinct names; a flip map of pairs of two different known names, each name in
    at most one pair; connection rules ``(name, name, (r, g, b))`` of known names; one positive
    OKS sigma per name. ``None`` skips the flip map, the rules or the sigmas."""
    names = [] if isinstance(keypoint_names, str) else list(keypoint_names)
    if (
        not names
        or not all(isinstance(n, str) and n for n in names)
        or len(set(names)) != len(names)
    ):
        raise ValueError(
            f"{where}: keypoint_names={keypoint_names!r} must be a list of distinct non-empty "
            "strings"
        )
    known = set(names)
    if keypoint_flip_map is not None:
        seen = set()
        for pair in keypoint_flip_map:
            if len(pair) != 2 or pair[0] == pair[1] or not set(pair) <= known or seen & set(pair):
                raise ValueError(
                    f"{where}: keypoint_flip_map entry {tuple(pair)!r} is invalid: expected "
                    "pairs (left, right) of two different names of keypoint_names, each name in "
                    f"at most one pair; keypoint_names={names!r}"
                )
            seen.update(pair)
    if keypoint_connection_rules is not None:
        for rule in keypoint_connection_rules:
            if len(rule) != 3 or not {rule[0], rule[1]} <= known or len(rule[2]) != 3:
                raise ValueError(
                    f"{where}: keypoint_connection_rules entry {tuple(rule)!r} is invalid: "
                    f"expected (name, name, (r, g, b)) with names of keypoint_names={names!r}"
                )
    if oks_sigmas is not None:
        sigmas = list(oks_sigmas)
        if len(sigmas) != len(names) or not all(is_finite_number(s) and s > 0 for s in sigmas):
            raise ValueError(
                f"{where}: oks_sigmas has {len(sigmas)} values {sigmas!r}; expected one "
                f"positive number per keypoint ({len(names)}: {names!r})"
            )


def read_keypoint_set(value, key):
    """The register_keypoint_dataset keyword arguments that ``value`` (a name of
    :data:`KEYPOINT_SETS` or a JSON file of those arguments) stands for."""
    if value in KEYPOINT_SETS:
        return KEYPOINT_SETS[value]
    if not value.endswith(".json"):
        raise ValueError(
            f"{key}={value!r} is invalid: expected one of {sorted(KEYPOINT_SETS)} or a .json "
            f"file with the keys {list(_KEYPOINT_SET_FIELDS)}"
        )
    try:
        with open(value) as f:
            keypoint_set = json.load(f)
    except (OSError, ValueError) as e:
        raise ValueError(f"{key}={value!r}: cannot read it as JSON: {e}") from e
    fields = set(keypoint_set) if isinstance(keypoint_set, dict) else None
    if fields is None or not fields <= set(_KEYPOINT_SET_FIELDS) or "keypoint_names" not in fields:
        raise ValueError(
            f"{key}={value!r}: expected an object with keypoint_names and any of "
            f"{list(_KEYPOINT_SET_FIELDS[1:])}, got {sorted(fields) if fields else keypoint_set!r}"
        )
    return keypoint_set
