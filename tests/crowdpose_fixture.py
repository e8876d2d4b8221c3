"""A 14-keypoint CrowdPose-format copy of the real COCO images' annotations, for tests.

CrowdPose's files list 14 keypoints per person (``CROWDPOSE_KEYPOINTS``: COCO's 12 limb joints,
then the top of the head and the neck), have no ``area`` and no segmentation. Here the head is
the mean of the labelled face points (nose, eyes, ears) and the neck the midpoint of the
shoulders when both are labelled; everything else is COCO's annotation.
"""

import json

import numpy as np

from detectron2.data.datasets.builtin_meta import COCO_PERSON_KEYPOINT_NAMES

from d2_edwpose.data import CROWDPOSE_KEYPOINTS

CROWDPOSE_NAMES = CROWDPOSE_KEYPOINTS["keypoint_names"]
_FACE = ("nose", "left_eye", "right_eye", "left_ear", "right_ear")


def _crowdpose_keypoints(coco_keypoints):
    coco = dict(
        zip(COCO_PERSON_KEYPOINT_NAMES, np.asarray(coco_keypoints, dtype=float).reshape(-1, 3))
    )
    face = np.array([coco[name] for name in _FACE if coco[name][2] > 0])
    head = [*face[:, :2].mean(axis=0), face[:, 2].max()] if len(face) else [0, 0, 0]
    shoulders = [coco["left_shoulder"], coco["right_shoulder"]]
    if all(s[2] > 0 for s in shoulders):
        neck = [*(shoulders[0][:2] + shoulders[1][:2]) / 2, min(s[2] for s in shoulders)]
    else:
        neck = [0, 0, 0]
    points = [coco[name] for name in CROWDPOSE_NAMES[:12]] + [head, neck]
    return [
        round(float(value), 2) if i % 3 != 2 else int(value)
        for i, value in enumerate(np.ravel(points))
    ]


def write_crowdpose_fixture(coco_root, output_dir):
    """Write ``output_dir/crowdpose_mini.json`` from ``coco_root``'s
    ``person_keypoints_val2017_mini.json``; return its path. Images stay in
    ``coco_root / "val2017"``."""
    coco = json.loads((coco_root / "person_keypoints_val2017_mini.json").read_text())
    annotations = []
    for annotation in coco["annotations"]:
        keypoints = _crowdpose_keypoints(annotation["keypoints"])
        annotations.append(
            {
                "id": annotation["id"],
                "image_id": annotation["image_id"],
                "category_id": 1,
                "bbox": annotation["bbox"],
                "iscrowd": annotation["iscrowd"],
                "num_keypoints": sum(v > 0 for v in keypoints[2::3]),
                "keypoints": keypoints,
            }
        )
    categories = [
        {
            "id": 1,
            "name": "person",
            "supercategory": "person",
            "keypoints": list(CROWDPOSE_NAMES),
            "skeleton": [
                [CROWDPOSE_NAMES.index(a) + 1, CROWDPOSE_NAMES.index(b) + 1]
                for a, b, _ in CROWDPOSE_KEYPOINTS["keypoint_connection_rules"]
            ],
        }
    ]
    images = [
        {key: image[key] for key in ("id", "file_name", "height", "width")}
        for image in coco["images"]
    ]
    path = output_dir / "crowdpose_mini.json"
    path.write_text(
        json.dumps({"images": images, "annotations": annotations, "categories": categories})
    )
    return path
