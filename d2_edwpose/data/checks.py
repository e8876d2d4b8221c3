"""Clear reports on bad training data: unreadable images, odd annotations.

detectron2 copes with most odd annotations silently (it drops empty boxes, marks keypoints
outside the image as unlabelled, removes images without people) and reports an unreadable
image with an error that often does not name the file. These helpers say what happened and
where.
"""
import logging
import os

from detectron2.structures import BoxMode

__all__ = ["SampleLoadError", "ReportingMapper", "check_annotations", "check_keypoint_counts"]

logger = logging.getLogger(__name__)

# How many offending annotations a warning names.
_EXAMPLES = 5


class SampleLoadError(RuntimeError):
    """A dataset sample (typically its image file) could not be loaded or mapped."""


class ReportingMapper:
    """Wraps a dataset mapper (e.g. detectron2's ``DatasetMapper``) so that any exception it
    raises is re-raised as :class:`SampleLoadError` naming the image file and id.

    An unreadable image stops training or evaluation rather than being skipped: skipping would
    silently change the data a run sees, and with it what a resumed run repeats.
    """

    def __init__(self, mapper):
        self.mapper = mapper

    def __call__(self, dataset_dict):
        try:
            return self.mapper(dataset_dict)
        except Exception as e:
            sample = (
                f"{dataset_dict.get('file_name')!r} (image_id {dataset_dict.get('image_id')!r})"
            )
            # Unreadable or corrupt files fail in PIL/OpenCV with OSError (PIL's
            # UnidentifiedImageError is one) or ValueError; other errors are the mapper's own.
            if isinstance(e, (OSError, ValueError)):
                raise SampleLoadError(
                    f"Cannot load the image {sample}: {type(e).__name__}: {e}. Replace or remove "
                    "the file, or its entry in the dataset's annotations."
                ) from e
            raise SampleLoadError(f"Mapping the sample {sample} failed: {type(e).__name__}: {e}") from e


def _describe(record, index):
    return f"{os.path.basename(str(record.get('file_name')))} (annotation {index})"


def _examples(found):
    shown = ", ".join(found[:_EXAMPLES])
    return shown + (f", ... ({len(found) - _EXAMPLES} more)" if len(found) > _EXAMPLES else "")


def check_keypoint_counts(dataset_dicts, dataset_names, num_keypoints):
    """Raise ValueError naming the image and the annotation whose keypoints are not
    ``num_keypoints`` (x, y, v) triplets: detectron2 would fail on it later (in a flip, or in
    the evaluation), or train on shifted triplets."""
    for record in dataset_dicts:
        for index, annotation in enumerate(record.get("annotations", [])):
            keypoints = annotation.get("keypoints")
            if keypoints is not None and len(keypoints) != 3 * num_keypoints:
                raise ValueError(
                    f"Dataset {', '.join(dataset_names)}: {_describe(record, index)} has "
                    f"{len(keypoints)} keypoint values; expected {3 * num_keypoints} "
                    f"({num_keypoints} keypoints x (x, y, visibility)) as set by "
                    f"MODEL.ROI_KEYPOINT_HEAD.NUM_KEYPOINTS={num_keypoints}"
                )


def check_annotations(dataset_dicts, dataset_names, num_keypoints=None):
    """Check detectron2 dataset dicts before training on them.

    Raises ValueError for an annotation whose keypoints are not ``num_keypoints`` (x, y, v)
    triplets (:func:`check_keypoint_counts`). Logs one warning
    per kind of annotation that detectron2 changes silently:

    * a box with zero or negative width or height: detectron2's ``DatasetMapper`` drops the
      instance, keypoints included (``filter_empty_instances``);
    * a labelled keypoint (v > 0) outside its image: detectron2 marks it unlabelled (v = 0)
      (``transform_keypoint_annotations``);

    and logs how many images have no person. detectron2 removes them (and logs it) unless
    ``DATALOADER.FILTER_EMPTY_ANNOTATIONS`` is False and
    ``MODEL.ROI_KEYPOINT_HEAD.MIN_KEYPOINTS_PER_IMAGE`` is 0; then they train as negatives.
    Crowd annotations are ignored in training and not checked.

    Args:
        dataset_dicts (list[dict]): in detectron2's standard dataset format.
        dataset_names (list[str]): where they come from, for the messages.
        num_keypoints (int or None): keypoints per instance; None skips the keypoint checks.
    """
    if num_keypoints is not None:
        check_keypoint_counts(dataset_dicts, dataset_names, num_keypoints)
    names = ", ".join(dataset_names)
    empty_boxes, keypoints_outside, without_people = [], [], 0
    for record in dataset_dicts:
        height, width = record.get("height"), record.get("width")
        annotations = [a for a in record.get("annotations", []) if not a.get("iscrowd", 0)]
        without_people += not annotations
        for index, annotation in enumerate(annotations):
            x0, y0, x1, y1 = BoxMode.convert(
                list(annotation["bbox"]), annotation["bbox_mode"], BoxMode.XYXY_ABS
            )
            if x1 <= x0 or y1 <= y0:
                empty_boxes.append(_describe(record, index))
            keypoints = annotation.get("keypoints")
            if num_keypoints is None or keypoints is None:
                continue
            if height is None or width is None:
                continue
            # detectron2's criterion (transform_keypoint_annotations): inside [0, W] x [0, H].
            if any(
                v > 0 and not (0 <= x <= width and 0 <= y <= height)
                for x, y, v in zip(keypoints[0::3], keypoints[1::3], keypoints[2::3])
            ):
                keypoints_outside.append(_describe(record, index))

    if empty_boxes:
        logger.warning(
            f"Dataset {names}: {len(empty_boxes)} annotations have a box of zero or negative "
            "width or height; training ignores them and their keypoints: "
            + _examples(empty_boxes)
        )
    if keypoints_outside:
        logger.warning(
            f"Dataset {names}: {len(keypoints_outside)} annotations have labelled keypoints "
            "outside the image; training treats those keypoints as unlabelled: "
            + _examples(keypoints_outside)
        )
    if without_people:
        logger.info(
            f"Dataset {names}: {without_people} of {len(dataset_dicts)} training images have no "
            "person; they are used as negatives (DATALOADER.FILTER_EMPTY_ANNOTATIONS=True or "
            "MODEL.ROI_KEYPOINT_HEAD.MIN_KEYPOINTS_PER_IMAGE >= 1 removes them)."
        )
