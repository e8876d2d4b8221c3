"""Keypoint sets: the names of a dataset's keypoints with what a horizontal flip swaps, the
skeleton the ``Visualizer`` draws and COCO evaluation's OKS sigmas; the known sets (COCO's
person keypoints, CrowdPose, AI Challenger, MPII, AP-10K, Animal-Pose, COCO-WholeBody's hand),
their checks, and the ones a config names."""

import json

from detectron2.data.datasets.builtin_meta import (
    COCO_PERSON_KEYPOINT_FLIP_MAP,
    COCO_PERSON_KEYPOINT_NAMES,
    KEYPOINT_CONNECTION_RULES,
)

from ..utils.validation import check_config_value, is_finite_number
from .keypoint_names import CENTRE, LEFT, RIGHT, infer_flip_map, keypoint_sides, normalized_name

__all__ = [
    "COCO_PERSON_KEYPOINTS",
    "COCO_PERSON_OKS_SIGMAS",
    "CROWDPOSE_KEYPOINTS",
    "DEFAULT_OKS_SIGMA",
    "KEYPOINT_SETS",
    "SIDE_COLORS",
    "known_keypoint_set",
    "read_keypoint_set",
    "side_colored_rules",
    "validate_keypoint_set",
]

# RGB colours of left, right and centre keypoints and limbs, in drawings and in the skeletons
# built here (mmpose's convention).
SIDE_COLORS = {LEFT: (0, 255, 0), RIGHT: (255, 128, 0), CENTRE: (51, 153, 255)}


def side_colored_rules(keypoint_names, keypoint_flip_map, limbs):
    """``keypoint_connection_rules`` for ``limbs`` (pairs of names): a limb is drawn in the
    colour of its side, left or right when one of its ends is on that side and none on the
    other, else centre."""
    side = dict(zip(keypoint_names, keypoint_sides(keypoint_names, keypoint_flip_map)))
    rules = []
    for a, b in limbs:
        ends = {side[a], side[b]} - {CENTRE}
        rules.append((a, b, SIDE_COLORS[ends.pop() if len(ends) == 1 else CENTRE]))
    return tuple(rules)


def _keypoint_set(names, limbs, oks_sigmas):
    """A keypoint set whose flip pairs follow from its names (keypoint_names' rule)."""
    inferred = infer_flip_map(names)
    assert not inferred.unpaired, inferred
    return dict(
        keypoint_names=tuple(names),
        keypoint_flip_map=inferred.pairs,
        keypoint_connection_rules=side_colored_rules(names, inferred.pairs, limbs),
        oks_sigmas=tuple(oks_sigmas),
    )


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

# AI Challenger's 14 keypoints; the sigmas of its evaluation (keypoint_eval.py's delta / 2,
# which COCOeval's formula takes as sigmas), as mmpose has them.
_AIC_NAMES = (
    "right_shoulder", "right_elbow", "right_wrist", "left_shoulder", "left_elbow", "left_wrist",
    "right_hip", "right_knee", "right_ankle", "left_hip", "left_knee", "left_ankle",
    "head_top", "neck",
)  # fmt: skip
AI_CHALLENGER_KEYPOINTS = _keypoint_set(
    _AIC_NAMES,
    (
        ("right_wrist", "right_elbow"), ("right_elbow", "right_shoulder"),
        ("right_shoulder", "neck"), ("neck", "left_shoulder"), ("left_shoulder", "left_elbow"),
        ("left_elbow", "left_wrist"), ("right_ankle", "right_knee"), ("right_knee", "right_hip"),
        ("right_hip", "left_hip"), ("left_hip", "left_knee"), ("left_knee", "left_ankle"),
        ("head_top", "neck"), ("right_shoulder", "right_hip"), ("left_shoulder", "left_hip"),
    ),
    (
        0.01388152, 0.01515228, 0.01057665, 0.01417709, 0.01497891, 0.01402144, 0.03909642,
        0.03686941, 0.01981803, 0.03843971, 0.03412318, 0.02415081, 0.01291456, 0.01236173,
    ),
)  # fmt: skip
# MPII's 16 joints; it is evaluated by PCKh, these are the sigmas mmpose adapted from COCO's.
MPII_KEYPOINTS = _keypoint_set(
    (
        "right_ankle", "right_knee", "right_hip", "left_hip", "left_knee", "left_ankle",
        "pelvis", "thorax", "upper_neck", "head_top", "right_wrist", "right_elbow",
        "right_shoulder", "left_shoulder", "left_elbow", "left_wrist",
    ),
    (
        ("right_ankle", "right_knee"), ("right_knee", "right_hip"), ("right_hip", "pelvis"),
        ("pelvis", "left_hip"), ("left_hip", "left_knee"), ("left_knee", "left_ankle"),
        ("pelvis", "thorax"), ("thorax", "upper_neck"), ("upper_neck", "head_top"),
        ("upper_neck", "right_shoulder"), ("right_shoulder", "right_elbow"),
        ("right_elbow", "right_wrist"), ("upper_neck", "left_shoulder"),
        ("left_shoulder", "left_elbow"), ("left_elbow", "left_wrist"),
    ),
    (
        0.089, 0.083, 0.107, 0.107, 0.083, 0.089, 0.026, 0.026, 0.026, 0.026, 0.062, 0.072,
        0.179, 0.179, 0.072, 0.062,
    ),
)  # fmt: skip
# AP-10K's 17 animal keypoints (54 species); sigmas as mmpose adapted them from COCO's, in
# AP-10K's keypoint order.
AP10K_KEYPOINTS = _keypoint_set(
    (
        "left_eye", "right_eye", "nose", "neck", "root_of_tail", "left_shoulder", "left_elbow",
        "left_front_paw", "right_shoulder", "right_elbow", "right_front_paw", "left_hip",
        "left_knee", "left_back_paw", "right_hip", "right_knee", "right_back_paw",
    ),
    (
        ("left_eye", "right_eye"), ("left_eye", "nose"), ("right_eye", "nose"), ("nose", "neck"),
        ("neck", "root_of_tail"), ("neck", "left_shoulder"), ("left_shoulder", "left_elbow"),
        ("left_elbow", "left_front_paw"), ("neck", "right_shoulder"),
        ("right_shoulder", "right_elbow"), ("right_elbow", "right_front_paw"),
        ("root_of_tail", "left_hip"), ("left_hip", "left_knee"), ("left_knee", "left_back_paw"),
        ("root_of_tail", "right_hip"), ("right_hip", "right_knee"),
        ("right_knee", "right_back_paw"),
    ),
    (
        0.025, 0.025, 0.026, 0.035, 0.035, 0.079, 0.072, 0.062, 0.079, 0.072, 0.062, 0.107,
        0.087, 0.089, 0.107, 0.087, 0.089,
    ),
)  # fmt: skip
# Animal-Pose's 20 keypoints (cats, dogs, horses, sheep, cows); sigmas as mmpose adapted them.
ANIMAL_POSE_KEYPOINTS = _keypoint_set(
    (
        "left_eye", "right_eye", "left_ear_base", "right_ear_base", "nose", "throat",
        "tail_base", "withers", "left_front_elbow", "right_front_elbow", "left_back_elbow",
        "right_back_elbow", "left_front_knee", "right_front_knee", "left_back_knee",
        "right_back_knee", "left_front_paw", "right_front_paw", "left_back_paw",
        "right_back_paw",
    ),
    (
        ("left_eye", "right_eye"), ("left_eye", "left_ear_base"),
        ("right_eye", "right_ear_base"), ("left_eye", "nose"), ("right_eye", "nose"),
        ("nose", "throat"), ("throat", "withers"), ("tail_base", "withers"),
        ("throat", "left_front_elbow"), ("left_front_elbow", "left_front_knee"),
        ("left_front_knee", "left_front_paw"), ("throat", "right_front_elbow"),
        ("right_front_elbow", "right_front_knee"), ("right_front_knee", "right_front_paw"),
        ("tail_base", "left_back_elbow"), ("left_back_elbow", "left_back_knee"),
        ("left_back_knee", "left_back_paw"), ("tail_base", "right_back_elbow"),
        ("right_back_elbow", "right_back_knee"), ("right_back_knee", "right_back_paw"),
    ),
    (
        0.025, 0.025, 0.026, 0.035, 0.035, 0.10, 0.10, 0.10, 0.107, 0.107, 0.107, 0.107,
        0.087, 0.087, 0.087, 0.087, 0.089, 0.089, 0.089, 0.089,
    ),
)  # fmt: skip
# A hand's 21 keypoints (COCO-WholeBody, OneHand10K, FreiHAND, ...); COCO-WholeBody's sigmas.
_FINGERS = ("thumb", "forefinger", "middle_finger", "ring_finger", "pinky_finger")
HAND_KEYPOINTS = _keypoint_set(
    ("wrist", *(f"{finger}{joint}" for finger in _FINGERS for joint in range(1, 5))),
    tuple(
        (f"{finger}{joint - 1}" if joint > 1 else "wrist", f"{finger}{joint}")
        for finger in _FINGERS
        for joint in range(1, 5)
    ),
    (
        0.029, 0.022, 0.035, 0.037, 0.047, 0.026, 0.025, 0.024, 0.035, 0.018, 0.024, 0.022,
        0.026, 0.017, 0.021, 0.021, 0.032, 0.02, 0.019, 0.022, 0.031,
    ),
)  # fmt: skip

# The keypoint sets that DATASETS.COCO_KEYPOINTS.<name>.KEYPOINT_SET names, and that a file's
# keypoint names are matched against (known_keypoint_set).
KEYPOINT_SETS = {
    "coco_person": COCO_PERSON_KEYPOINTS,
    "crowdpose": CROWDPOSE_KEYPOINTS,
    "ai_challenger": AI_CHALLENGER_KEYPOINTS,
    "mpii": MPII_KEYPOINTS,
    "ap10k": AP10K_KEYPOINTS,
    "animal_pose": ANIMAL_POSE_KEYPOINTS,
    "hand": HAND_KEYPOINTS,
}
_KEYPOINT_SET_FIELDS = tuple(COCO_PERSON_KEYPOINTS)
# The OKS sigma of every keypoint of a set that is none of KEYPOINT_SETS and declares none:
# the mean of COCO's 17 person sigmas, one tolerance for all keypoints.
DEFAULT_OKS_SIGMA = round(sum(COCO_PERSON_OKS_SIGMAS) / len(COCO_PERSON_OKS_SIGMAS), 3)


def known_keypoint_set(keypoint_names):
    """(name, keypoint set) of the set of :data:`KEYPOINT_SETS` whose names are
    ``keypoint_names`` in the same order, up to spelling (``"Right Shoulder"`` is
    ``"right_shoulder"``, ``"L_F_Paw"`` is ``"left_front_paw"``); (None, None) if none is."""
    forms = [normalized_name(name) for name in keypoint_names]
    for set_name, keypoint_set in KEYPOINT_SETS.items():
        if forms == [normalized_name(name) for name in keypoint_set["keypoint_names"]]:
            return set_name, keypoint_set
    return None, None


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
    check_config_value(
        key,
        value,
        value.endswith(".json"),
        "'from_file' (the default: the keypoints of the file's categories), one of "
        f"{sorted(KEYPOINT_SETS)} or a .json file with the keys {list(_KEYPOINT_SET_FIELDS)}",
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
