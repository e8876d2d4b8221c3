"""What keypoint names say: their spelling-independent form, their side (left, right or
centre), the flip pairs they imply, and whether a skeleton is the mirror image of itself under
a flip map.

The rule that infers flip pairs from names (:func:`infer_flip_map`):

1. a name is split into words at every character other than a letter or a digit and at
   camel-case boundaries (``"Right Shoulder"``, ``"right_shoulder"``, ``"RShoulder"``,
   ``"L_F_Paw"`` -> ``right|shoulder``, ``right|shoulder``, ``r|shoulder``, ``l|f|paw``);
2. a name with exactly one side word, ``left``/``l`` or ``right``/``r`` (any case), is sided;
3. two sided names pair when their words are the same, case aside, except that one has
   ``left`` where the other has ``right`` (or ``l`` where the other has ``r``).

A sided name without a twin, or with a side word twice, pairs with nothing and is reported.
"""

import re

__all__ = [
    "CENTRE",
    "LEFT",
    "RIGHT",
    "InferredFlipMap",
    "asymmetric_limbs",
    "infer_flip_map",
    "keypoint_sides",
    "name_words",
    "normalized_name",
    "spelling_mismatch",
]

LEFT, RIGHT, CENTRE = "left", "right", "centre"

# Side words, and the word a mirror image puts in their place (same style: l <-> r).
_MIRROR_WORDS = {"left": "right", "right": "left", "l": "r", "r": "l"}
_SIDE_OF_WORD = {"left": LEFT, "l": LEFT, "right": RIGHT, "r": RIGHT}
# Abbreviations that known keypoint sets' names spell out (AP-10K's "L_F_Paw" is
# "left_front_paw" in its annotation files).
_SPELLED_OUT = {"l": "left", "r": "right", "f": "front", "b": "back"}
_WORDS = re.compile(r"[A-Z]+(?![a-z])|[A-Z]?[a-z]+|[0-9]+")


def name_words(name):
    """The words of a keypoint name, lower-cased: split at characters other than letters and
    digits, and, in ASCII parts, at camel-case boundaries (``"LShoulder"`` -> ``["l",
    "shoulder"]``). A name of no words is one word, itself."""
    words = []
    for part in re.split(r"[\W_]+", name):
        words.extend(_WORDS.findall(part) if part.isascii() else [part] if part else [])
    return [word.lower() for word in words] or [name.lower()]


def normalized_name(name):
    """The spelling-independent form of a name: its words, abbreviated sides and limbs
    spelled out, joined by "_" (``"Right Shoulder"``, ``"R_Shoulder"`` and ``"rightShoulder"``
    are all ``"right_shoulder"``). Two names with the same form name the same keypoint."""
    return "_".join(_SPELLED_OUT.get(word, word) for word in name_words(name))


def _side_word_positions(words):
    return [i for i, word in enumerate(words) if word in _SIDE_OF_WORD]


class InferredFlipMap:
    """The flip pairs that :func:`infer_flip_map` found, and the names it could not pair."""

    def __init__(self, pairs, unpaired):
        self.pairs = tuple(pairs)  # ((left name, right name), ...) in the names' order
        self.unpaired = tuple(unpaired)  # sided names without exactly one mirror twin

    def __repr__(self):
        return f"InferredFlipMap(pairs={self.pairs!r}, unpaired={self.unpaired!r})"


def infer_flip_map(keypoint_names):
    """The (left, right) pairs the names imply, by the rule of this module's docstring."""
    by_words = {}
    for name in keypoint_names:
        by_words.setdefault(tuple(name_words(name)), []).append(name)
    pairs, unpaired, paired = [], [], set()
    for name in keypoint_names:
        if name in paired:
            continue
        words = name_words(name)
        sides = _side_word_positions(words)
        if not sides:
            continue
        if len(sides) > 1:
            unpaired.append(name)
            continue
        (i,) = sides
        mirrored = tuple(words[:i] + [_MIRROR_WORDS[words[i]]] + words[i + 1 :])
        twins = by_words.get(mirrored, [])
        if len(twins) != 1 or len(by_words[tuple(words)]) != 1:
            unpaired.append(name)
            continue
        (twin,) = twins
        pair = (name, twin) if _SIDE_OF_WORD[words[i]] == LEFT else (twin, name)
        pairs.append(pair)
        paired.update(pair)
    return InferredFlipMap(pairs, unpaired)


def keypoint_sides(keypoint_names, keypoint_flip_map):
    """The side of each keypoint, for drawing: the side its name says, else, for a keypoint of
    a flip pair whose names say no side, left for the first of the pair and right for the
    second; ``CENTRE`` for every keypoint of no pair."""
    first = {a: b for a, b in keypoint_flip_map}
    second = {b: a for a, b in keypoint_flip_map}
    sides = []
    for name in keypoint_names:
        if name not in first and name not in second:
            sides.append(CENTRE)
            continue
        words = name_words(name)
        positions = _side_word_positions(words)
        if len(positions) == 1:
            sides.append(_SIDE_OF_WORD[words[positions[0]]])
        else:
            sides.append(LEFT if name in first else RIGHT)
    return sides


def asymmetric_limbs(limbs, keypoint_flip_map):
    """The limbs (pairs of names) whose mirror image under ``keypoint_flip_map`` is no limb:
    a flip maps a skeleton onto itself only when the flip map pairs every keypoint with its
    mirror twin, so such a limb shows a missing or wrong pair (or a one-sided skeleton)."""
    mirror = {}
    for a, b in keypoint_flip_map:
        mirror[a], mirror[b] = b, a
    edges = {frozenset(limb) for limb in limbs}
    return [
        tuple(limb)
        for limb in limbs
        if frozenset(mirror.get(name, name) for name in limb) not in edges
    ]


def spelling_mismatch(file_names, registered_names):
    """None when ``file_names`` are ``registered_names`` in the same order, up to spelling
    (:func:`normalized_name`); else a description of what differs: the positions whose names
    differ, or the order in which the file has the same keypoints."""
    file_names, registered_names = list(file_names), list(registered_names)
    file_forms = [normalized_name(n) for n in file_names]
    registered_forms = [normalized_name(n) for n in registered_names]
    if file_forms == registered_forms:
        return None
    if len(file_names) != len(registered_names):
        return (
            f"the file names {len(file_names)} keypoints, the registration "
            f"{len(registered_names)}"
        )
    if sorted(file_forms) == sorted(registered_forms) and len(set(file_forms)) == len(file_forms):
        return f"the same keypoints in another order: the file's is {file_names}"
    differing = [
        f"{i}: file {a!r} vs registered {b!r}"
        for i, (a, b, fa, fb) in enumerate(
            zip(file_names, registered_names, file_forms, registered_forms)
        )
        if fa != fb
    ]
    return "these positions name other keypoints: " + "; ".join(differing)
