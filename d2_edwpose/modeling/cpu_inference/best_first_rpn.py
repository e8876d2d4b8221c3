"""Best-first RPN proposals: detectron2's test-time RPN proposal selection with NMS run on the
best candidates first.

detectron2's :func:`find_top_rpn_proposals` takes the ``pre_nms_topk`` best anchors of every
level, runs NMS on all of them and keeps the ``post_nms_topk`` best survivors. torchvision's CPU
NMS compares every kept box with every later one, so where few boxes overlap (an RPN that is
unsure, randomly initialised weights) it costs ~n^2 / 2 IoUs.

Greedy NMS decides each box from the higher-scoring boxes of its level alone. NMS over the
candidates scoring at least some threshold therefore keeps the boxes that NMS over all
candidates keeps among them, and once those are ``post_nms_topk`` they are the answer: every
other survivor scores lower. :func:`find_top_rpn_proposals_best_first` runs detectron2's own
selection on the best ``1.5 * post_nms_topk`` candidates first and on more (at last all) only
when too few survive. Two cases take all candidates at once: equal scores among the tried ones
(``torch.sort`` orders them by the tensor it sorts, so detectron2 could order, and suppress,
them differently in a part) and NaN scores (sorted first, they take candidate places that a
part would give to others).

The result is detectron2's up to float rounding: torchvision's ``batched_nms`` runs one NMS on
boxes shifted by level (by the largest coordinate of the set + 1) when there are at most 1,000
boxes on a CPU, and one NMS per level on the boxes as they are otherwise. The shift rounds
coordinates, so a part and all candidates, run the one way and the other, can compute an IoU
differently in its last bits and decide differently for a pair of boxes whose IoU is within
~1e-6 of the NMS threshold.
"""

import math
from typing import List, Tuple

import torch
from torch import nn

from detectron2.modeling.proposal_generator.proposal_utils import find_top_rpn_proposals
from detectron2.modeling.proposal_generator.rpn import RPN

__all__ = ["BestFirstRPN", "find_top_rpn_proposals_best_first", "select_rpn_proposals_best_first"]

# The first try takes this many candidates per proposal to keep. With randomly initialised weights
# ~90% of all candidates survive NMS, with the demo's trained weights 70-80% (fewer among the
# best, which overlap more): 1.5 suffices for both (1.25 fails for the trained weights).
_FIRST_TRY = 1.5
_GROWTH = 1.5


def find_top_rpn_proposals_best_first(
    proposals: List[torch.Tensor],
    pred_objectness_logits: List[torch.Tensor],
    image_sizes: List[Tuple[int, int]],
    nms_thresh: float,
    pre_nms_topk: int,
    post_nms_topk: int,
    min_box_size: float,
    training: bool,
):
    """detectron2's :func:`find_top_rpn_proposals` (same arguments, same result up to float
    rounding), running NMS on the best-scoring candidates of each image first (module
    docstring). Training takes detectron2's path: it checks all candidates for NaN and Inf."""
    settings = (nms_thresh, pre_nms_topk, post_nms_topk, min_box_size, training)
    if training:
        return find_top_rpn_proposals(proposals, pred_objectness_logits, image_sizes, *settings)
    results = []
    for image, image_size in enumerate(image_sizes):
        image_proposals = [p[image : image + 1] for p in proposals]
        image_logits = [logits[image : image + 1] for logits in pred_objectness_logits]
        # Each level's candidates, as detectron2 picks them: its pre_nms_topk best.
        level_candidates = [
            logits[0].topk(min(logits.shape[1], pre_nms_topk)).values for logits in image_logits
        ]
        candidates = torch.cat(level_candidates)
        if post_nms_topk <= 0 or candidates.isnan().any():
            budget = len(candidates)
        else:
            budget = math.ceil(_FIRST_TRY * post_nms_topk)
        while True:
            part = None
            if budget < len(candidates):
                threshold = candidates.topk(budget).values[-1]
                part = _best_candidates(image_proposals, image_logits, level_candidates, threshold)
            if part is None:  # all candidates
                budget = len(candidates)
                part = image_proposals, image_logits
            (result,) = find_top_rpn_proposals(*part, [image_size], *settings)
            if len(result) >= post_nms_topk or budget >= len(candidates):
                results.append(result)
                break
            # Too few survived: next try enough candidates for the fraction that did, with a
            # margin, and at least _GROWTH times as many.
            survived = max(len(result), 1)
            budget = math.ceil(max(_GROWTH, _FIRST_TRY * post_nms_topk / survived) * budget)
    return results


def _best_candidates(proposals, logits, level_candidates, threshold):
    """The (proposals, logits) of one image's candidates scoring at least ``threshold``, level by
    level, or None where they have equal scores."""
    # Within each level's candidates: a level whose scores all exceed the others' must not bring
    # more than its pre_nms_topk best.
    selected = [
        level_logits[0] >= torch.maximum(threshold, best[-1]) if len(best) else slice(0)
        for level_logits, best in zip(logits, level_candidates)
    ]
    part_logits = [level_logits[:, s] for level_logits, s in zip(logits, selected)]
    # With distinct scores the part is the best of each level in one order: detectron2 picks,
    # orders and suppresses in it as in all. Equal scores it may order differently in a part.
    scores = torch.cat([level_logits[0] for level_logits in part_logits])
    if len(scores.unique()) != len(scores):
        return None
    return [p[:, s] for p, s in zip(proposals, selected)], part_logits


class BestFirstRPN(RPN):
    """detectron2's :class:`RPN` selecting its CPU inference proposals with
    :func:`find_top_rpn_proposals_best_first`; training, tracing and other devices (whose NMS
    kernels do not compare box after box) take detectron2's path. It adds no state:
    :func:`select_rpn_proposals_best_first` turns a detectron2 RPN into one by setting its
    class."""

    def predict_proposals(self, anchors, pred_objectness_logits, pred_anchor_deltas, image_sizes):
        if (
            self.training
            or torch.jit.is_tracing()
            or pred_objectness_logits[0].device.type != "cpu"
        ):
            return super().predict_proposals(
                anchors, pred_objectness_logits, pred_anchor_deltas, image_sizes
            )
        # As detectron2: proposals are not differentiated through.
        with torch.no_grad():
            return find_top_rpn_proposals_best_first(
                self._decode_proposals(anchors, pred_anchor_deltas),
                pred_objectness_logits,
                image_sizes,
                self.nms_thresh,
                self.pre_nms_topk[False],
                self.post_nms_topk[False],
                self.min_box_size,
                False,
            )


def select_rpn_proposals_best_first(model: nn.Module) -> int:
    """Make every detectron2 :class:`RPN` of ``model`` a :class:`BestFirstRPN`, in place (same
    object, submodules and settings); returns how many."""
    changed = 0
    for module in model.modules():
        if type(module) is RPN:
            module.__class__ = BestFirstRPN
            changed += 1
    return changed
