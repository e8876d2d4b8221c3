"""COCO keypoint files in the layouts of public keypoint datasets, written for tests: their
categories as the datasets' own files have them (names in the datasets' spellings, 1-based
skeletons), with a few images and random people. Registration and loading read only the file;
:func:`write_images` writes blank images of the records' sizes for what reads the images too
(the image scan before training)."""

import json
from pathlib import Path

import cv2
import numpy as np

from d2_edwpose.data.keypoint_sets import KEYPOINT_SETS

_AIC_NAMES = [
    "Right Shoulder", "Right Elbow", "Right Wrist", "Left Shoulder", "Left Elbow", "Left Wrist",
    "Right Hip", "Right Knee", "Right Ankle", "Left Hip", "Left Knee", "Left Ankle",
    "Head top", "Neck",
]  # fmt: skip
_ANIMAL_POSE_NAMES = [
    "L_Eye", "R_Eye", "L_EarBase", "R_EarBase", "Nose", "Throat", "TailBase", "Withers",
    "L_F_Elbow", "R_F_Elbow", "L_B_Elbow", "R_B_Elbow", "L_F_Knee", "R_F_Knee", "L_B_Knee",
    "R_B_Knee", "L_F_Paw", "R_F_Paw", "L_B_Paw", "R_B_Paw",
]  # fmt: skip


def _spelled(known, names):
    """The limbs of the known set ``known`` in the spelling ``names`` (same order)."""
    keypoint_set = KEYPOINT_SETS[known]
    index = {name: i for i, name in enumerate(keypoint_set["keypoint_names"])}
    rules = keypoint_set["keypoint_connection_rules"]
    return [(names[index[a]], names[index[b]]) for a, b, _ in rules]


def _snake(known):
    return list(KEYPOINT_SETS[known]["keypoint_names"])


# layout -> (keypoint names as the dataset's files spell them, limbs, categories, the known set
# the names are, the number of flip pairs).
LAYOUTS = {
    "ai_challenger": (
        _AIC_NAMES, _spelled("ai_challenger", _AIC_NAMES), ["person"], "ai_challenger", 6,
    ),
    "mpii": (_snake("mpii"), _spelled("mpii", _snake("mpii")), ["person"], "mpii", 6),
    "hand": (_snake("hand"), _spelled("hand", _snake("hand")), ["hand"], "hand", 0),
    "macaque": (
        _snake("coco_person"), _spelled("coco_person", _snake("coco_person")), ["monkey"],
        "coco_person", 8,
    ),
    "animal_pose": (
        _ANIMAL_POSE_NAMES, _spelled("animal_pose", _ANIMAL_POSE_NAMES),
        ["cat", "dog", "horse", "sheep", "cow"], "animal_pose", 8,
    ),
    "ap10k": (
        _snake("ap10k"), _spelled("ap10k", _snake("ap10k")),
        [f"species_{i}" for i in range(54)], "ap10k", 7,
    ),
    # OpenPose-style names of no known set.
    "openpose_arms": (
        ["Neck", "RShoulder", "RElbow", "RWrist", "LShoulder", "LElbow", "LWrist"],
        [("Neck", "RShoulder"), ("RShoulder", "RElbow"), ("RElbow", "RWrist"),
         ("Neck", "LShoulder"), ("LShoulder", "LElbow"), ("LElbow", "LWrist")],
        ["person"], None, 3,
    ),
}  # fmt: skip


def coco_keypoint_file(keypoint_names, limbs, categories, *, num_images=2, seed=0, size=(120, 160)):
    """A COCO keypoint dict: ``categories`` (names) sharing the keypoints and skeleton (limbs:
    name pairs), two people per image with random boxes and keypoints, of cycling categories."""
    rng = np.random.default_rng(seed)
    index = {name: i + 1 for i, name in enumerate(keypoint_names)}
    height, width = size
    coco = {
        "images": [
            {"id": i + 1, "file_name": f"{i:06d}.jpg", "height": height, "width": width}
            for i in range(num_images)
        ],
        "annotations": [],
        "categories": [
            {
                "id": c + 1,
                "name": name,
                "supercategory": "thing",
                "keypoints": list(keypoint_names),
                "skeleton": [[index[a], index[b]] for a, b in limbs],
            }
            for c, name in enumerate(categories)
        ],
    }
    for image in coco["images"]:
        for _ in range(2):
            x, y = rng.uniform(0, width / 2), rng.uniform(0, height / 2)
            w, h = rng.uniform(10, width / 2), rng.uniform(10, height / 2)
            keypoints = []
            for _ in keypoint_names:
                keypoints += [round(x + rng.uniform(0, w), 2), round(y + rng.uniform(0, h), 2), 2]
            coco["annotations"].append(
                {
                    "id": len(coco["annotations"]) + 1,
                    "image_id": image["id"],
                    "category_id": len(coco["annotations"]) % len(categories) + 1,
                    "bbox": [round(x, 2), round(y, 2), round(w, 2), round(h, 2)],
                    "area": round(w * h, 2),
                    "iscrowd": 0,
                    "num_keypoints": len(keypoint_names),
                    "keypoints": keypoints,
                }
            )
    return coco


def write_layout(path, layout, **kwargs):
    """Write the COCO file of ``LAYOUTS[layout]`` to ``path``; return ``path``."""
    names, limbs, categories, _, _ = LAYOUTS[layout]
    path.write_text(json.dumps(coco_keypoint_file(names, limbs, categories, **kwargs)))
    return path


def write_images(json_file, image_root):
    """Blank JPEGs of the records' sizes under ``image_root`` for the images of ``json_file``
    that are not there yet."""
    for image in json.loads(Path(json_file).read_text())["images"]:
        path = Path(image_root) / image["file_name"]
        if not path.exists():
            cv2.imwrite(str(path), np.zeros((image["height"], image["width"], 3), np.uint8))
