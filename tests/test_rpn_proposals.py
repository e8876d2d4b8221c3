"""The best-first RPN proposal selection returns exactly detectron2's."""

import pytest
import torch

from detectron2.modeling import build_model
from detectron2.modeling.proposal_generator.proposal_utils import find_top_rpn_proposals
from detectron2.modeling.proposal_generator.rpn import RPN
from detectron2.structures import Boxes

from d2_edwpose.modeling.cpu_inference import best_first_rpn, optimize_for_inference
from d2_edwpose.modeling.cpu_inference.best_first_rpn import (
    BestFirstRPN,
    find_top_rpn_proposals_best_first,
)
from d2_edwpose.model_zoo import CONFIG_DIR
from d2_edwpose.modeling.analysis import analysis_config

IMAGE_SIZE = (320, 320)


def random_levels(generator, num_images, anchors_per_level, box_size, spread):
    """Per level (N, anchors, 4) boxes of about ``box_size`` px scattered over ``spread`` px,
    and (N, anchors) logits."""
    proposals, logits = [], []
    for anchors in anchors_per_level:
        centers = torch.rand(num_images, anchors, 2, generator=generator) * spread
        sizes = box_size * (0.5 + torch.rand(num_images, anchors, 2, generator=generator))
        proposals.append(torch.cat([centers - sizes / 2, centers + sizes / 2], dim=2))
        logits.append(torch.randn(num_images, anchors, generator=generator))
    return proposals, logits


def assert_same_selection(proposals, logits, pre_nms_topk, post_nms_topk, min_box_size=0.0):
    arguments = ([IMAGE_SIZE] * len(logits[0]), 0.7, pre_nms_topk, post_nms_topk, min_box_size)
    expected = find_top_rpn_proposals(proposals, logits, *arguments, False)
    actual = find_top_rpn_proposals_best_first(proposals, logits, *arguments, False)
    assert len(actual) == len(expected)
    for reference, result in zip(expected, actual):
        assert result.image_size == reference.image_size
        assert torch.equal(result.proposal_boxes.tensor, reference.proposal_boxes.tensor)
        assert torch.equal(result.objectness_logits, reference.objectness_logits)
    return expected


@pytest.fixture
def tries(monkeypatch):
    """The candidate counts of each call of detectron2's selection by the best-first one."""
    counts = []

    def counted(proposals, *args):
        counts.append(sum(level.shape[1] for level in proposals))
        return find_top_rpn_proposals(proposals, *args)

    monkeypatch.setattr(best_first_rpn, "find_top_rpn_proposals", counted)
    return counts


def test_few_overlaps_take_one_try_on_the_best_candidates(tries):
    # Small boxes scattered widely: nearly all survive NMS.
    proposals, logits = random_levels(
        torch.Generator().manual_seed(0), 2, [4000, 1000, 250], box_size=8, spread=320
    )
    expected = assert_same_selection(proposals, logits, pre_nms_topk=1000, post_nms_topk=300)
    assert all(len(result) == 300 for result in expected)
    assert tries == [450, 450]  # 1.5 x 300 per image, out of 2,250 candidates


def test_a_level_scoring_above_all_others_gives_only_its_candidates(tries):
    proposals, logits = random_levels(
        torch.Generator().manual_seed(6), 1, [3000, 1000], box_size=8, spread=320
    )
    logits[0] += 10.0  # as the finest level of a randomly initialised RPN
    assert_same_selection(proposals, logits, pre_nms_topk=500, post_nms_topk=400)
    # 600 of the 1,000 candidates: the 500 of the first level, 100 of the second.
    assert tries == [600]


def test_many_overlaps_take_more_tries_up_to_all_candidates(tries):
    # Large boxes in a small area: most are suppressed, fewer than post_nms_topk survive.
    proposals, logits = random_levels(
        torch.Generator().manual_seed(1), 1, [2000, 500], box_size=60, spread=40
    )
    expected = assert_same_selection(proposals, logits, pre_nms_topk=1000, post_nms_topk=200)
    assert len(expected[0]) < 200
    # 1.5 x 200, then more; finally all 2,500 anchors (1,500 candidates).
    assert tries[0] == 300 and tries[-1] == 2500 and tries == sorted(tries)


def test_boxes_that_detectron2_drops_select_the_same(tries):
    proposals, logits = random_levels(
        torch.Generator().manual_seed(2), 1, [600, 300], box_size=10, spread=320
    )
    # Empty, below min_box_size, non-finite.
    proposals[0][0, :40, 2:] = proposals[0][0, :40, :2] + 1.0
    proposals[0][0, 40:50] = float("nan")
    proposals[1][0, :10] = float("inf")
    assert_same_selection(proposals, logits, pre_nms_topk=500, post_nms_topk=100, min_box_size=2)
    assert tries[0] == 150


@pytest.mark.parametrize(
    "case, expected_tries",
    [
        ("no change", [150]),
        ("tie among the best", [900]),
        ("few distinct scores", [900]),
        ("tie at a level's cut", [150]),
        ("inf", [150]),
        ("nan", [900]),
    ],
)
def test_tied_or_non_finite_scores(tries, case, expected_tries):
    """Equal scores among the first try's candidates, or NaN, make it select from all."""
    proposals, logits = random_levels(
        torch.Generator().manual_seed(3), 1, [600, 300], box_size=10, spread=320
    )
    ranked = logits[0][0].argsort(descending=True)
    if case == "tie among the best":
        logits[0][0, ranked[50]] = logits[0][0, ranked[49]]
    elif case == "few distinct scores":  # as in a flat image region
        logits = [(level * 2).round() / 2 for level in logits]
    elif case == "tie at a level's cut":  # far below the first try's candidates
        logits[0][0, ranked[500]] = logits[0][0, ranked[499]]
    elif case in ("inf", "nan"):
        logits[1][0, 0] = float(case)
    assert_same_selection(proposals, logits, pre_nms_topk=500, post_nms_topk=100)
    assert tries == expected_tries


def test_no_proposals_wanted_and_training_select_as_detectron2(tries):
    proposals, logits = random_levels(
        torch.Generator().manual_seed(7), 1, [600, 300], box_size=10, spread=320
    )
    assert [len(result) for result in assert_same_selection(proposals, logits, 500, 0)] == [0]
    # Training: all candidates, as detectron2 checks them all for non-finite values.
    proposals[1][0, -1] = float("nan")
    arguments = (proposals, logits, [IMAGE_SIZE], 0.7, 500, 100, 0.0, True)
    with pytest.raises(FloatingPointError):
        find_top_rpn_proposals_best_first(*arguments)
    assert tries == [900, 900]  # both on all 900 anchors


def test_empty_levels_and_fewer_candidates_than_the_first_try():
    proposals, logits = random_levels(
        torch.Generator().manual_seed(4), 2, [0, 100, 20], box_size=10, spread=320
    )
    expected = assert_same_selection(proposals, logits, pre_nms_topk=50, post_nms_topk=1000)
    assert 0 < len(expected[0]) <= 70


def test_optimize_for_inference_selects_a_models_proposals_best_first(monkeypatch):
    cfg = analysis_config(str(CONFIG_DIR / "keypoint_rcnn_mv3_fpn_320_edw.yaml"))
    cfg.MODEL.WEIGHTS = ""
    cfg.MODEL.ROI_KEYPOINT_HEAD.CONV_DIMS = (64,)
    model = build_model(cfg).eval()
    assert type(model.proposal_generator) is RPN
    optimize_for_inference(model, device="cpu")
    assert type(model.proposal_generator) is BestFirstRPN

    calls = []
    selection = best_first_rpn.find_top_rpn_proposals_best_first

    def selection_of_both(*args):
        calls.append(args)
        return selection(*args)

    monkeypatch.setattr(best_first_rpn, "find_top_rpn_proposals_best_first", selection_of_both)
    image = {"image": torch.randint(0, 256, (3, 320, 320), dtype=torch.uint8)}
    with torch.no_grad():
        model([image])
    (arguments,) = calls
    # The model's own settings, at inference.
    assert arguments[3:] == (
        cfg.MODEL.RPN.NMS_THRESH,
        cfg.MODEL.RPN.PRE_NMS_TOPK_TEST,
        cfg.MODEL.RPN.POST_NMS_TOPK_TEST,
        cfg.MODEL.PROPOSAL_GENERATOR.MIN_SIZE,
        False,
    )
    # Training takes detectron2's path.
    proposals, logits = random_levels(torch.Generator().manual_seed(5), 1, [300, 75], 10, 320)
    anchors = [Boxes(level[0]) for level in proposals]
    deltas = [torch.zeros_like(level) for level in proposals]
    rpn = model.proposal_generator
    for training, grad, expected_calls in ((True, False, 0), (False, False, 1), (False, True, 1)):
        calls.clear()
        rpn.train(training)
        with torch.set_grad_enabled(grad):
            rpn.predict_proposals(anchors, logits, deltas, [IMAGE_SIZE])
        assert len(calls) == expected_calls
