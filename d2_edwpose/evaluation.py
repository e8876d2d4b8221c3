"""COCO keypoint evaluation for any keypoint set and category selection."""
import contextlib
import io

from detectron2.evaluation import COCOEvaluator

from .data.coco_keypoints import category_selection, complete_coco_annotations

__all__ = ["KeypointCOCOEvaluator"]


class KeypointCOCOEvaluator(COCOEvaluator):
    """detectron2's ``COCOEvaluator``, whose ground truth gets the fields that keypoint-only
    COCO-format files leave out (``area``, ``iscrowd``, ``num_keypoints``; see
    :func:`~d2_edwpose.data.coco_keypoints.complete_coco_annotations`) before evaluating:
    pycocotools' ``COCOeval`` would fail on them with a ``KeyError`` after the whole schedule.
    For a dataset that keeps some of its file's categories, or trains them as one class
    (``register_keypoint_dataset``'s ``categories`` and ``one_class``), the ground truth is
    rewritten to those classes, which the model predicts.

    Pass the OKS sigmas of the dataset's keypoint set as ``kpt_oks_sigmas``
    (:func:`~d2_edwpose.data.catalog.oks_sigmas`); empty means COCO's 17.
    """

    def __init__(self, dataset_name, *args, **kwargs):
        super().__init__(dataset_name, *args, **kwargs)
        ground_truth = self._coco_api.dataset
        # pycocotools' index holds the same annotation dicts: filling them in place suffices.
        complete_coco_annotations(ground_truth)
        if {"selected_categories", "one_class"} & set(self._metadata.as_dict()):
            category_selection(dataset_name, ground_truth["categories"]).apply_to_ground_truth(
                ground_truth
            )
            with contextlib.redirect_stdout(io.StringIO()):  # pycocotools prints its progress
                self._coco_api.createIndex()
