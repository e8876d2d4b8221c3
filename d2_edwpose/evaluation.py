"""COCO keypoint evaluation for any keypoint set."""

from detectron2.evaluation import COCOEvaluator

from .data.coco_keypoints import complete_coco_annotations

__all__ = ["KeypointCOCOEvaluator"]


class KeypointCOCOEvaluator(COCOEvaluator):
    """detectron2's ``COCOEvaluator``, whose ground truth gets the fields that keypoint-only
    COCO-format files leave out (``area``, ``iscrowd``, ``num_keypoints``; see
    :func:`~d2_edwpose.data.coco_keypoints.complete_coco_annotations`) before evaluating:
    pycocotools' ``COCOeval`` would fail on them with a ``KeyError`` after the whole schedule.

    Pass the OKS sigmas of the dataset's keypoint set as ``kpt_oks_sigmas``
    (:func:`~d2_edwpose.data.catalog.oks_sigmas`); empty means COCO's 17.
    """

    def __init__(self, dataset_name, *args, **kwargs):
        super().__init__(dataset_name, *args, **kwargs)
        # pycocotools' index holds the same annotation dicts: filling them in place suffices.
        complete_coco_annotations(self._coco_api.dataset)
