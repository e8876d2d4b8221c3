"""COCO keypoint evaluation for any keypoint set and category selection."""
import contextlib
import io
import logging

from detectron2.evaluation import COCOEvaluator

from ..data.coco_keypoints import category_selection, complete_coco_annotations

__all__ = ["KeypointCOCOEvaluator"]

logger = logging.getLogger(__name__)


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

    When it was given fewer images than its ground truth holds (the image scan left bad ones
    out: ``DATASETS.IMAGE_SCAN.BAD_ENTRIES "drop"``), it scores the images it was given, with a
    warning, rather than counting every person of the others as missed.
    """

    def __init__(self, dataset_name, *args, **kwargs):
        super().__init__(dataset_name, *args, **kwargs)
        self._dataset_name = dataset_name
        ground_truth = self._coco_api.dataset
        # pycocotools' index holds the same annotation dicts: filling them in place suffices.
        complete_coco_annotations(ground_truth)
        if {"selected_categories", "one_class"} & set(self._metadata.as_dict()):
            category_selection(dataset_name, ground_truth["categories"]).apply_to_ground_truth(
                ground_truth
            )
            with contextlib.redirect_stdout(io.StringIO()):  # pycocotools prints its progress
                self._coco_api.createIndex()

    def _eval_predictions(self, predictions, img_ids=None):
        if img_ids is None:
            evaluated = {prediction["image_id"] for prediction in predictions}
            ground_truth = set(self._coco_api.getImgIds())
            if evaluated < ground_truth:
                logger.warning(
                    f"Evaluating {len(evaluated)} of the {len(ground_truth)} images of "
                    f"'{self._dataset_name}': the other {len(ground_truth - evaluated)} were "
                    "not in the test loader (the image scan leaves bad images out with "
                    "DATASETS.IMAGE_SCAN.BAD_ENTRIES 'drop'). The AP below is over these images "
                    "only, not comparable with an AP over the whole set."
                )
                img_ids = sorted(evaluated)
        super()._eval_predictions(predictions, img_ids=img_ids)
