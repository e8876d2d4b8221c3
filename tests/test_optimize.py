"""optimize_for_inference changes how fast a model runs, not what it computes."""
import copy
from concurrent.futures import ThreadPoolExecutor

import pytest
import torch
from torch import nn

from detectron2.layers import Conv2d, FrozenBatchNorm2d, ROIAlign
from detectron2.modeling import build_model

from d2_edwpose.layers import DWConv, EDWConv
from d2_edwpose.modeling.optimize import (
    ThreadedROIAlign,
    fold_conv_norms,
    optimize_for_inference,
)
from d2_edwpose.tools.analyze_model import CONFIG_DIR, REALTIME_CONFIG, load_config
from d2_edwpose.tools.benchmark import fix_num_detections


def randomize_norm_statistics(model, generator):
    for module in model.modules():
        if isinstance(module, (nn.BatchNorm2d, FrozenBatchNorm2d)):
            channels = module.num_features
            module.running_mean.copy_(torch.randn(channels, generator=generator) * 0.1)
            module.running_var.copy_(torch.rand(channels, generator=generator) + 0.5)
            if module.weight is not None:
                module.weight.data.copy_(torch.rand(channels, generator=generator) + 0.5)
                module.bias.data.copy_(torch.randn(channels, generator=generator) * 0.1)


def test_folds_frozen_and_eval_batchnorms_into_the_convs_before_them():
    generator = torch.Generator().manual_seed(0)
    model = nn.Sequential(
        nn.Conv2d(3, 8, 3, padding=1, bias=False),
        nn.BatchNorm2d(8),
        nn.ReLU(),
        Conv2d(8, 8, 3, padding=1, norm=FrozenBatchNorm2d(8), activation=nn.ReLU()),
        nn.Sequential(nn.Conv2d(8, 4, 1), FrozenBatchNorm2d(4)),
    ).eval()
    randomize_norm_statistics(model, generator)
    x = torch.randn(2, 3, 9, 11, generator=generator)
    expected = model(x)
    assert fold_conv_norms(model) == 3
    assert isinstance(model[1], nn.Identity) and model[3].norm is None
    assert isinstance(model[4][1], nn.Identity)
    torch.testing.assert_close(model(x), expected, rtol=1e-5, atol=1e-5)


def test_keeps_norms_that_do_not_act_as_a_fixed_affine_map():
    training_bn = nn.Sequential(nn.Conv2d(3, 4, 1), nn.BatchNorm2d(4)).train()
    batch_statistics = nn.Sequential(
        nn.Conv2d(3, 4, 1), nn.BatchNorm2d(4, track_running_stats=False)
    ).eval()
    group_norm = Conv2d(3, 4, 1, norm=nn.GroupNorm(2, 4)).eval()
    for model in (training_bn, batch_statistics, group_norm):
        assert fold_conv_norms(model) == 0


@pytest.mark.parametrize("expand_factor", [2, 3])
@pytest.mark.parametrize("channels_last", [False, True])
def test_edwconv_as_a_plain_depthwise_conv_on_tiled_input(expand_factor, channels_last):
    torch.manual_seed(0)
    edw = nn.Sequential(
        EDWConv(6, 5, 3, padding=1, expand_factor=expand_factor, activation=nn.ReLU()),
        DWConv(5, 4, 3, padding=1),
    ).eval()
    nn.init.normal_(edw[0].pointwise.bias)
    x = torch.randn(3, 6, 7, 8)
    expected = edw(x)
    optimized = optimize_for_inference(copy.deepcopy(edw), device="cpu")
    assert type(optimized[0]).__name__ == "_TiledInputEDWConv"
    assert optimized[0].depthwise.groups == 6 * expand_factor
    assert isinstance(optimized[1], DWConv)  # already a plain depthwise conv
    if channels_last:
        x = x.contiguous(memory_format=torch.channels_last)
    torch.testing.assert_close(optimized(x), expected, rtol=1e-5, atol=1e-5)
    assert optimized(torch.zeros(0, 6, 7, 8)).shape == (0, 4, 7, 8)


def test_threaded_roi_align_equals_roi_align(monkeypatch):
    from d2_edwpose.modeling import optimize

    pools = []
    monkeypatch.setattr(optimize, "_executor", lambda n: pools.append(n) or ThreadPoolExecutor(n))
    torch.manual_seed(0)
    features = torch.randn(2, 16, 40, 40)
    corners = torch.rand(150, 2) * 100
    boxes = torch.cat([corners, corners + 5 + torch.rand(150, 2) * 60], dim=1)
    rois = torch.cat([torch.randint(0, 2, (150, 1)).float(), boxes], dim=1)
    stock, threaded = ROIAlign((7, 7), 0.25, 0), ThreadedROIAlign((7, 7), 0.25, 0)
    threads = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        with torch.no_grad():
            assert torch.equal(threaded(features, rois), stock(features, rois))
            channels_last = features.contiguous(memory_format=torch.channels_last)
            assert torch.equal(threaded(channels_last, rois), stock(features, rois))
    finally:
        torch.set_num_threads(threads)
    assert pools == [2, 2]  # both calls took the threaded path


def test_refuses_a_model_in_training_mode():
    with pytest.raises(ValueError, match="model.eval()"):
        optimize_for_inference(nn.Sequential(nn.Conv2d(1, 1, 1)))


def calibrated_model(cfg, generator):
    """A randomly initialised model with random norm statistics, and heads small enough for
    distinct scores and finite heatmaps, so that its detections are a real comparison."""
    torch.manual_seed(0)
    model = build_model(cfg).eval()
    randomize_norm_statistics(model, generator)
    with torch.no_grad():
        for layer in (model.roi_heads.box_predictor.cls_score, model.roi_heads.box_predictor.bbox_pred):
            layer.weight.normal_(0, 0.01, generator=generator)
            layer.bias.normal_(0, 0.1, generator=generator)
    return model


@pytest.mark.parametrize(
    "config",
    [CONFIG_DIR / "keypoint_rcnn_mv3_fpn_320_edw.yaml", REALTIME_CONFIG,
     CONFIG_DIR / "cpu_demo_keypoint_rcnn_mv3_fpn_320_edw.yaml"],
    ids=lambda p: p.stem,
)  # fmt: skip
def test_optimized_model_gives_the_same_detections(config):
    cfg = fix_num_detections(load_config(config), 20)
    cfg.MODEL.DEVICE = "cpu"
    generator = torch.Generator().manual_seed(0)
    model = calibrated_model(cfg, generator)
    optimized = optimize_for_inference(copy.deepcopy(model))
    assert not any(
        isinstance(m, (nn.BatchNorm2d, FrozenBatchNorm2d)) for m in optimized.modules()
    )
    kinds = [type(m).__name__ for m in optimized.modules()]
    assert kinds.count("_TiledInputEDWConv") == len(cfg.MODEL.ROI_KEYPOINT_HEAD.CONV_DIMS)
    assert kinds.count("ThreadedROIAlign") == 2 * len(cfg.MODEL.ROI_HEADS.IN_FEATURES)
    inputs = [
        {"image": torch.randint(0, 256, (3, 240, 360), dtype=torch.uint8, generator=generator)},
        {"image": torch.randint(0, 256, (3, 320, 320), dtype=torch.uint8, generator=generator)},
    ]
    threads = torch.get_num_threads()
    torch.set_num_threads(2)  # the threaded RoIAlign's path, whatever the machine
    try:
        with torch.no_grad():
            expected, actual = model(inputs), optimized(inputs)
    finally:
        torch.set_num_threads(threads)
    for reference, result in zip(expected, actual):
        reference, result = reference["instances"], result["instances"]
        assert len(result) == len(reference) == 20
        assert torch.equal(result.pred_classes, reference.pred_classes)
        torch.testing.assert_close(result.scores, reference.scores, rtol=0, atol=1e-4)
        assert (result.pred_boxes.tensor - reference.pred_boxes.tensor).abs().max() <= 0.01
        keypoints, reference_keypoints = result.pred_keypoints, reference.pred_keypoints
        assert (keypoints[..., :2] - reference_keypoints[..., :2]).abs().max() <= 0.01
        torch.testing.assert_close(keypoints[..., 2], reference_keypoints[..., 2], rtol=1e-4, atol=1e-4)
