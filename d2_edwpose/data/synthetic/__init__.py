"""A synthetic multi-person keypoint dataset in COCO ``person_keypoints`` format, so that the
whole pipeline (training, evaluation, demo) runs without COCO.

Every image shows 1-4 articulated figures with the 17 COCO joints (:mod:`.figures`), in
random poses, clothing and skin colours, at varied scales, over a cluttered background
(:mod:`.rendering`). Later figures occlude earlier ones; figures are cut by the image border.
Generate it with ``python -m d2_edwpose.tools.generate_synthetic_keypoints --output DIR`` or
:func:`generate_synthetic_keypoints` (:mod:`.generation`); both skip a DIR that already
holds the same dataset. :func:`generate_synthetic_clip` (the tool's ``--clip``) writes a
video of the same figures walking across each other, with their track ids, boxes and
keypoints per frame, for tracking.

``import d2_edwpose.data`` registers ``synthetic_keypoints_train`` and
``synthetic_keypoints_val`` for :func:`default_root` (``$D2_EDWPOSE_SYNTHETIC_ROOT``, else
``$DETECTRON2_DATASETS/synthetic_keypoints``), which is also the tool's default ``--output``;
:func:`register_synthetic_keypoints` points them at another root (:mod:`.registration`).

Layout::

    DIR/train/000000.jpg ...                 DIR/val/000000.jpg ...
    DIR/annotations/person_keypoints_train.json
    DIR/annotations/person_keypoints_val.json

Labelling conventions (COCO's, made exact by construction):

* Keypoints are in pixel-index coordinates (the pixel a joint falls on is
  ``(round(x), round(y))``); detectron2's loader adds 0.5 as for COCO.
* Left/right follow the person, not the image. A front-facing figure has a face (eyes,
  nose, mouth, hairline at the top), so its LEFT joints are on the image's right; a
  back-facing figure shows hair and no face, and its left joints are on the image's left.
  Each annotation has an extra ``"facing"`` field, ``"front"`` or ``"back"`` (COCO tools
  ignore it). Figures carry no left/right asymmetry besides that: horizontal-flip
  augmentation swaps the labels and would contradict, e.g., a watch on the left wrist.
* Visibility: ``v=2`` visible; ``v=1`` labelled but not visible: a joint covered by a
  figure drawn later, and eyes and nose of a back-facing figure (their place is clear from
  the head); ``v=0`` with ``x=y=0`` for a joint outside the image. Ears are drawn on both
  sides of the head, so they are visible from the front and from the back.
* ``bbox``, ``segmentation`` (outline polygons) and ``area`` (pixel count) describe each
  figure's full drawn extent inside the image, including parts hidden by people in front:
  every labelled keypoint lies inside its box, and occluded people keep a box that matches
  their pose. ``area`` is what COCO's keypoint evaluation uses as the OKS scale.
* No one is dropped: every drawn figure is annotated, so no unlabelled person can turn a
  correct detection into a false positive. Instead, placement keeps figures mostly inside
  the image and rejects positions that would hide much of a figure behind a later one.

The dataset is deterministic: image ``i`` of a split is drawn from a random generator
seeded with ``(seed, split, i)``, so same parameters give identical files. Images and json
files are written atomically and the json files last, so an interrupted run is detected
and redone; the parameters are stored in the json's ``"info"``.
"""

from .generation import generate_synthetic_clip, generate_synthetic_keypoints
from .registration import (
    DATASET_NAMES,
    GENERATE_COMMAND,
    default_root,
    register_synthetic_keypoints,
)

__all__ = [
    "DATASET_NAMES",
    "GENERATE_COMMAND",
    "default_root",
    "generate_synthetic_clip",
    "generate_synthetic_keypoints",
    "register_synthetic_keypoints",
]

register_synthetic_keypoints(default_root())
