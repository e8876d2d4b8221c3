"""detectron2's keypoint decoding, computed without the work its outputs do not need."""
from typing import List

import torch
from torch.nn import functional as F

from detectron2.layers import cat
from detectron2.structures import Instances

__all__ = ["heatmaps_to_keypoints", "keypoint_rcnn_inference"]


@torch.jit.script_if_tracing
def heatmaps_to_keypoints(maps: torch.Tensor, rois: torch.Tensor) -> torch.Tensor:
    """
    Same inputs and outputs as :func:`detectron2.structures.keypoints.heatmaps_to_keypoints`:
    (#ROIs, #keypoints, 4) with (x, y, logit, score) per keypoint, equal to detectron2's.

    detectron2 upsamples each RoI's heatmaps to the box size (bicubic), takes the argmax, and
    computes a spatial softmax over the whole upsampled map normalised at heatmap resolution:
    ``score = exp(roi_map - max) / sum(exp(maps - max))``, of which it keeps only the value at
    the argmax, where ``roi_map - max`` is 0: the score is ``1 / sum(exp(maps - max))``. The
    full-resolution exponentials, division and its check (three passes over up to 17 x 320 x 320
    values per RoI at 320 x 320 input, most of the decoding time on a CPU) are skipped here.
    """
    maps = maps.detach()
    rois = rois.detach()

    offset_x = rois[:, 0]
    offset_y = rois[:, 1]
    widths = (rois[:, 2] - rois[:, 0]).clamp(min=1)
    heights = (rois[:, 3] - rois[:, 1]).clamp(min=1)
    widths_ceil = widths.ceil()
    heights_ceil = heights.ceil()
    width_corrections = widths / widths_ceil
    height_corrections = heights / heights_ceil

    num_rois, num_keypoints = maps.shape[:2]
    xy_preds = maps.new_zeros(rois.shape[0], num_keypoints, 4)
    for i in range(num_rois):
        outsize = (int(heights_ceil[i]), int(widths_ceil[i]))
        roi_map = F.interpolate(maps[[i]], size=outsize, mode="bicubic", align_corners=False)
        roi_map = roi_map.view(num_keypoints, -1)
        pos = roi_map.argmax(1)
        max_score = roi_map.gather(1, pos[:, None])
        normalizer = (maps[i].view(num_keypoints, -1) - max_score).exp_().sum(1)

        w = outsize[1]
        x_int = pos % w
        y_int = (pos - x_int) // w
        xy_preds[i, :, 0] = (x_int.float() + 0.5) * width_corrections[i] + offset_x[i]
        xy_preds[i, :, 1] = (y_int.float() + 0.5) * height_corrections[i] + offset_y[i]
        xy_preds[i, :, 2] = max_score[:, 0]
        xy_preds[i, :, 3] = 1.0 / normalizer
    return xy_preds


def keypoint_rcnn_inference(pred_keypoint_logits: torch.Tensor, pred_instances: List[Instances]):
    """:func:`detectron2.modeling.roi_heads.keypoint_head.keypoint_rcnn_inference` (same fields:
    ``pred_keypoints`` as (x, y, score), ``pred_keypoint_heatmaps``) with the decoding above."""
    boxes = cat([instances.pred_boxes.tensor for instances in pred_instances], dim=0)
    pred_keypoint_logits = pred_keypoint_logits.detach()
    keypoints = heatmaps_to_keypoints(pred_keypoint_logits, boxes.detach())
    # Sizes, not len(): a trace keeps them dynamic (detectron2 patches len() in its own modules
    # when it traces, for the same reason).
    num_instances_per_image = [instances.pred_boxes.tensor.shape[0] for instances in pred_instances]
    keypoints = keypoints[:, :, [0, 1, 3]].split(num_instances_per_image, dim=0)
    heatmaps = pred_keypoint_logits.split(num_instances_per_image, dim=0)
    for keypoints_per_image, heatmaps_per_image, instances in zip(keypoints, heatmaps, pred_instances):
        instances.pred_keypoints = keypoints_per_image
        instances.pred_keypoint_heatmaps = heatmaps_per_image
