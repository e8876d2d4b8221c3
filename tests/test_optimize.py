"""optimize_for_inference changes how fast a model runs, not what it computes."""

import copy

import pytest
import torch
from torch import nn
from torch.nn import functional as F

from detectron2.layers import Conv2d, FrozenBatchNorm2d, ShapeSpec
from detectron2.modeling import build_model
from detectron2.modeling.backbone import Backbone
from detectron2.modeling.backbone.fpn import FPN
from detectron2.modeling.poolers import ROIPooler
from detectron2.modeling.proposal_generator.rpn import StandardRPNHead
from detectron2.structures import Boxes

from d2_edwpose.layers import DWConv, EDWConv
from d2_edwpose.modeling.cpu_inference import (
    REWRITES,
    fold_conv_norms,
    optimize_for_inference,
    winograd,
)
from d2_edwpose.modeling.cpu_inference.channels_last_roi import ChannelsLastROIPooler
from d2_edwpose.modeling.cpu_inference.edwconv_split import SplitEDWConv
from d2_edwpose.modeling.cpu_inference.module_replacement import replace_modules
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
def test_edwconv_as_summed_depthwise_separable_convs(expand_factor, channels_last):
    torch.manual_seed(0)
    edw = nn.Sequential(
        EDWConv(6, 5, 3, padding=1, expand_factor=expand_factor, activation=nn.ReLU()),
        DWConv(5, 4, 3, padding=1),
    ).eval()
    nn.init.normal_(edw[0].pointwise.bias)
    x = torch.randn(3, 6, 7, 8)
    expected = edw(x)
    optimized = optimize_for_inference(copy.deepcopy(edw), device="cpu")
    assert type(optimized[0]).__name__ == "SplitEDWConv"
    assert [conv.groups for conv in optimized[0].depthwise] == [6] * expand_factor
    assert isinstance(optimized[1], DWConv)  # already a plain depthwise conv
    if channels_last:
        x = x.contiguous(memory_format=torch.channels_last)
    torch.testing.assert_close(optimized(x), expected, rtol=1e-5, atol=1e-5)
    assert optimized(torch.zeros(0, 6, 7, 8)).shape == (0, 4, 7, 8)
    # Maps that are not NHWC (a split conv outside a channels-last model) are summed as such.
    split = SplitEDWConv(edw[0])
    torch.testing.assert_close(split(x.contiguous()), edw[0](x), rtol=1e-5, atol=1e-5)


def random_boxes(generator, count, image_size):
    """Boxes of every kind RoIAlign meets: inside, across and outside the image borders,
    elongated, tiny, empty and inverted."""
    corners = torch.rand(count, 2, generator=generator) * (image_size + 80) - 40
    sizes = torch.rand(count, 2, generator=generator) * torch.tensor([image_size * 0.9, 30.0])
    sizes[count // 2 :] = sizes[count // 2 :].flip(1)
    sizes[:4] = torch.tensor([[0.0, 0.0], [0.3, 0.2], [-3.0, 5.0], [2.0, -1.0]])
    return Boxes(torch.cat([corners, corners + sizes], dim=1))


@pytest.mark.parametrize("pooler_type", ["ROIAlignV2", "ROIAlign"])
@pytest.mark.parametrize("sampling_ratio", [0, 2])
@pytest.mark.parametrize("output_size", [7, 14])
@pytest.mark.parametrize("skip_padding", [False, True], ids=["padded-bags", "used-entries"])
def test_channels_last_roi_pooler_equals_detectrons(
    pooler_type, sampling_ratio, output_size, skip_padding, monkeypatch
):
    monkeypatch.setattr(ChannelsLastROIPooler, "max_padding_fraction", 0.0 if skip_padding else 1.0)
    generator = torch.Generator().manual_seed(0)
    strides = (4, 8, 16, 32)
    stock = ROIPooler(output_size, [1 / s for s in strides], sampling_ratio, pooler_type)
    ours = ChannelsLastROIPooler.from_pooler(stock)
    features = [torch.randn(2, 16, 160 // s, 192 // s, generator=generator) for s in strides]
    box_lists = [random_boxes(generator, 150, 160), random_boxes(generator, 90, 192)]
    with torch.no_grad():
        expected = stock(features, box_lists)
        for layout in (torch.contiguous_format, torch.channels_last):
            pooled = ours([f.contiguous(memory_format=layout) for f in features], box_lists)
            assert pooled.is_contiguous(memory_format=torch.channels_last)
            torch.testing.assert_close(pooled, expected, rtol=0, atol=1e-5)
        # One level: every box on it, its channels-last map used as it is.
        single = ROIPooler(output_size, [1 / 8], sampling_ratio, pooler_type)
        torch.testing.assert_close(
            ChannelsLastROIPooler.from_pooler(single)(
                [features[1].contiguous(memory_format=torch.channels_last)], box_lists
            ),
            single(features[1:2], box_lists),
            rtol=0,
            atol=1e-5,
        )
        # A box with a NaN coordinate is pooled on no level (zeros), as detectron2 pools boxes
        # of negative area; detectron2's own RoIAlign may fail on it.
        with_nan = [Boxes(boxes.tensor.clone()) for boxes in box_lists]
        with_nan[1].tensor[4, 1] = float("nan")
        pooled = ours(features, with_nan)
        nan_row = len(box_lists[0]) + 4
        assert torch.all(pooled[nan_row] == 0)
        others = torch.arange(len(pooled)) != nan_row
        torch.testing.assert_close(pooled[others], expected[others], rtol=0, atol=1e-5)
        empty = [Boxes(torch.zeros(0, 4)), Boxes(torch.zeros(0, 4))]
        assert ours(features, empty).shape == (0, 16, output_size, output_size)
        # Other dtypes take detectron2's path.
        as_double = [f.double() for f in features]
        assert torch.equal(ours(as_double, box_lists), stock(as_double, box_lists))
    # So does autograd.
    assert torch.equal(ours(features, box_lists), stock(features, box_lists))


def test_channels_last_roi_pooler_checks_its_inputs_as_detectron2_does():
    ours = ChannelsLastROIPooler.from_pooler(ROIPooler(7, [1 / 4, 1 / 8], 0, "ROIAlignV2"))
    features = [torch.randn(1, 4, 32, 32), torch.randn(1, 4, 16, 16)]
    boxes = [Boxes(torch.tensor([[0.0, 0.0, 50.0, 60.0]]))]
    with torch.no_grad(), pytest.raises(ValueError, match="2 feature maps expected, got 1"):
        ours(features[:1], boxes)
    with torch.no_grad(), pytest.raises(ValueError, match="1 images in the feature maps but 2"):
        ours(features, boxes * 2)


def test_only_roi_align_poolers_are_replaced():
    assert ChannelsLastROIPooler.supports(ROIPooler(7, [1 / 4], 0, "ROIAlignV2"))
    assert not ChannelsLastROIPooler.supports(ROIPooler(7, [1 / 4], 0, "ROIPool"))
    assert not ChannelsLastROIPooler.supports(ROIPooler(7, [1 / 4], 0, "ROIAlignRotated"))


@pytest.mark.parametrize(
    "batch, channels, out_channels, height, width, padding, bias, channels_last, max_tiles",
    [
        (1, 16, 8, 20, 20, (1, 1), True, True, 1024),
        (2, 7, 5, 33, 47, (1, 1), False, True, 1024),  # sizes that leave partial 4x4 tiles
        (3, 4, 6, 9, 10, (0, 0), True, False, 1024),  # NCHW input
        (2, 4, 3, 10, 10, (0, 0), True, False, 1024),  # NCHW, nothing to pad
        (1, 5, 3, 13, 11, (2, 1), True, True, 1024),  # padding wider than the kernel's half
        (1, 3, 2, 5, 6, (0, 2), False, True, 1024),
        (5, 4, 3, 8, 12, (1, 1), True, True, 12),  # in chunks of 2 images, the last of 1
        (2, 4, 3, 13, 11, (1, 1), True, True, 5),  # in bands of 1 and 2 tile rows
        (2, 4, 3, 18, 7, (1, 1), True, True, 4),
    ],
)  # fmt: skip
def test_winograd_conv3x3_equals_the_convolution(
    batch, channels, out_channels, height, width, padding, bias, channels_last, max_tiles
):
    generator = torch.Generator().manual_seed(0)
    x = torch.randn(batch, channels, height, width, generator=generator)
    if channels_last:
        x = x.contiguous(memory_format=torch.channels_last)
    weight = torch.randn(out_channels, channels, 3, 3, generator=generator)
    bias = torch.randn(out_channels, generator=generator) if bias else None
    expected = F.conv2d(
        x.double(), weight.double(), None if bias is None else bias.double(), padding=padding
    )
    transformed_weight = winograd.winograd_transform_weight(weight)
    out = winograd.winograd_conv3x3(x, transformed_weight, bias, padding, max_tiles)
    assert out.shape == expected.shape
    assert out.is_contiguous(memory_format=torch.channels_last)
    scale = expected.abs().max().item()
    torch.testing.assert_close(out.double(), expected, rtol=1e-5, atol=1e-5 * scale)


@pytest.mark.parametrize("bias, max_tiles", [(True, 1024), (False, 1024), (True, 20)])
def test_winograd_conv3x3_maps_equals_the_convolution_of_each_map(bias, max_tiles):
    generator = torch.Generator().manual_seed(0)
    # Pyramid-like maps of 2 images, with partial tiles (24, 12 and 2 tiles); with
    # max_tiles=20 the first is computed alone, in chunks, and the other two together.
    xs = [
        torch.randn(2, 5, height, width, generator=generator).contiguous(
            memory_format=torch.channels_last
        )
        for height, width in ((13, 11), (7, 9), (3, 2))
    ]
    weight = torch.randn(4, 5, 3, 3, generator=generator)
    bias = torch.randn(4, generator=generator) if bias else None
    transformed_weight = winograd.winograd_transform_weight(weight)
    outs = winograd.winograd_conv3x3_maps(xs, transformed_weight, bias, (1, 1), max_tiles)
    assert len(outs) == len(xs)
    for x, out in zip(xs, outs):
        expected = F.conv2d(
            x.double(), weight.double(), None if bias is None else bias.double(), padding=1
        )
        assert out.shape == expected.shape
        assert out.is_contiguous(memory_format=torch.channels_last)
        scale = expected.abs().max().item()
        torch.testing.assert_close(out.double(), expected, rtol=1e-5, atol=1e-5 * scale)


@pytest.fixture
def winograd_calls(monkeypatch):
    """The input shapes of the calls of ``winograd_conv3x3``, appended as they happen."""
    calls = []
    winograd_conv3x3 = winograd.winograd_conv3x3

    def counted_winograd(x, *args):
        calls.append(tuple(x.shape))
        return winograd_conv3x3(x, *args)

    monkeypatch.setattr(winograd, "winograd_conv3x3", counted_winograd)
    return calls


def test_winograd_convs_run_wide_convs_on_enough_tiles(winograd_calls):
    calls = winograd_calls
    torch.manual_seed(0)
    model = nn.Sequential(
        Conv2d(128, 128, 3, padding=1, activation=nn.ReLU()),
        nn.Conv2d(128, 128, 3, padding=1),
        nn.Conv2d(128, 128, 3, stride=2, padding=1),  # strided
        nn.Conv2d(128, 64, 3, padding=1),  # too few output channels
    ).eval()
    with torch.no_grad():
        for conv in model:
            conv.weight.mul_(0.1)
    inputs = [torch.randn(1, 128, size, size) for size in (16, 12)]
    with torch.no_grad():
        expected = [model(x) for x in inputs]
        optimized = optimize_for_inference(copy.deepcopy(model), device="cpu")
        kinds = [type(m).__name__ for m in optimized]
        assert kinds == ["WinogradConv2d", "WinogradConv2d", "Conv2d", "Conv2d"]
        for x, reference in zip(inputs, expected):
            channels_last = x.contiguous(memory_format=torch.channels_last)
            torch.testing.assert_close(optimized(channels_last), reference, rtol=1e-4, atol=1e-4)
        # 16x16 maps are 16 output tiles of 4x4: Winograd; 12x12 maps are 9: the direct conv.
        assert calls == [(1, 128, 16, 16), (1, 128, 16, 16)]
        calls.clear()
        assert optimized(torch.zeros(0, 128, 16, 16)).shape == (0, 64, 8, 8)
        optimize_for_inference(optimized, device="cpu")  # optimizing again changes nothing
        assert [type(m).__name__ for m in optimized] == kinds
        torch.testing.assert_close(optimized(inputs[0]), expected[0], rtol=1e-4, atol=1e-4)
        assert calls == [(1, 128, 16, 16), (1, 128, 16, 16)]
    # With autograd the direct convs run (Winograd is for inference only).
    calls.clear()
    optimized(inputs[0]).sum().backward()
    assert calls == [] and optimized[0].conv.weight.grad is not None


def test_winograd_conv_follows_its_weight(winograd_calls):
    calls = winograd_calls
    torch.manual_seed(0)
    conv = nn.Conv2d(128, 128, 3, padding=1).eval()
    wrapped = winograd.winograd_conv(conv)
    x = torch.randn(1, 128, 16, 16)

    def assert_runs_conv_of(weight, bias, module=wrapped):
        calls.clear()
        with torch.no_grad():
            expected = F.conv2d(x, weight, bias, padding=1)
            atol = 2e-5 * expected.abs().max().item()
            torch.testing.assert_close(module(x), expected, rtol=1e-4, atol=atol)
        assert calls == [tuple(x.shape)]  # by Winograd

    assert_runs_conv_of(conv.weight, conv.bias)  # transforms and caches the weight
    loaded = {"weight": torch.randn_like(conv.weight) * 0.1, "bias": torch.randn_like(conv.bias)}
    wrapped.conv.load_state_dict(loaded)  # copies in place
    assert_runs_conv_of(loaded["weight"], loaded["bias"])
    conv.weight = nn.Parameter(torch.randn_like(conv.weight) * 0.1)  # a new tensor
    assert_runs_conv_of(conv.weight, conv.bias)
    # Copies drop the cache and transform their own weights.
    copied = copy.deepcopy(wrapped)
    assert copied._transformed_weight is None
    with torch.no_grad():
        copied.conv.weight.mul_(2)
    assert_runs_conv_of(copied.conv.weight, copied.conv.bias, copied)
    assert_runs_conv_of(conv.weight, conv.bias)
    # Weights made in inference mode have no version counter: transformed on every call.
    with torch.inference_mode():
        inference_conv = nn.Conv2d(128, 128, 3, padding=1).eval()
    wrapped_inference_conv = winograd.winograd_conv(inference_conv)
    assert_runs_conv_of(inference_conv.weight, inference_conv.bias, wrapped_inference_conv)


def test_cpu_rewrites_trace_as_the_modules_they_replaced():
    # Exports trace the model: its graph must hold the original ops, valid for any input.
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(128, 128, 3, padding=1), nn.ConvTranspose2d(128, 4, 4, 2, 1))
    optimized = optimize_for_inference(copy.deepcopy(model.eval()), device="cpu")
    assert [type(m).__name__ for m in optimized] == ["WinogradConv2d", "ConvTranspose2d"]
    x = torch.randn(1, 128, 16, 16)
    with torch.no_grad():
        traced = torch.jit.trace(optimized, x)
        graph = str(traced.inlined_graph)
        assert graph.count("aten::_convolution") == 2
        assert "aten::bmm" not in graph
        torch.testing.assert_close(traced(x), model(x), rtol=1e-5, atol=1e-5)


def test_cpu_rewrites_leave_autocast_to_the_modules_they_replaced(winograd_calls):
    calls = winograd_calls
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(128, 128, 3, padding=1), nn.ConvTranspose2d(128, 4, 4, 2, 1))
    optimized = optimize_for_inference(copy.deepcopy(model.eval()), device="cpu")
    assert [type(m).__name__ for m in optimized] == ["WinogradConv2d", "ConvTranspose2d"]
    x = torch.randn(1, 128, 16, 16)
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
        expected, out = model(x), optimized(x)
    assert calls == [] and out.dtype == expected.dtype == torch.bfloat16
    torch.testing.assert_close(out, expected, rtol=0.05, atol=0.05)


def test_module_lists_that_forwards_iterate_are_updated():
    torch.manual_seed(0)
    fpn = FPN(bottom_up=_TwoLevelBackbone(), in_features=["c1", "c2"], out_channels=128).eval()
    x = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        expected = fpn(x)
        replace_modules(fpn, winograd.winograd_conv)
        assert all(type(conv).__name__ == "WinogradConv2d" for conv in fpn.output_convs)
        for name, features in fpn(x).items():
            torch.testing.assert_close(features, expected[name], rtol=1e-4, atol=1e-4)


class _TwoLevelBackbone(Backbone):
    def __init__(self):
        super().__init__()
        self.c1 = nn.Conv2d(3, 4, 3, stride=2, padding=1)
        self.c2 = nn.Conv2d(4, 4, 3, stride=2, padding=1)

    def forward(self, x):
        c1 = self.c1(x)
        return {"c1": c1, "c2": self.c2(c1)}

    def output_shape(self):
        return {"c1": ShapeSpec(channels=4, stride=2), "c2": ShapeSpec(channels=4, stride=4)}


def test_rpn_head_runs_its_conv_on_all_levels_at_once(monkeypatch):
    batched_calls = []
    winograd_maps = winograd.winograd_conv3x3_maps

    def counted_winograd_maps(xs, *args):
        batched_calls.append(len(xs))
        return winograd_maps(xs, *args)

    monkeypatch.setattr(winograd, "winograd_conv3x3_maps", counted_winograd_maps)
    torch.manual_seed(0)
    container = nn.Module()
    container.rpn_head = StandardRPNHead(in_channels=128, num_anchors=3)
    head = container.eval().rpn_head
    optimized = optimize_for_inference(copy.deepcopy(container), device="cpu").rpn_head
    assert type(optimized).__name__ == "LevelBatchedRPNHead"
    assert type(optimized.head.conv).__name__ == "WinogradConv2d"

    def assert_same_outputs(features):
        expected, actual = head(features), optimized(features)
        for expected_per_level, actual_per_level in zip(expected, actual):
            assert len(actual_per_level) == len(features)
            for reference, result in zip(expected_per_level, actual_per_level):
                torch.testing.assert_close(result, reference, rtol=1e-4, atol=1e-5)

    # Levels of 32x32 down to 2x2 (2 images of 64 + 16 + 4 + 1 + 1 tiles: one Winograd product
    # for all), and levels too small in all (the direct conv).
    pyramid = [torch.randn(2, 128, size, size) for size in (32, 16, 8, 4, 2)]
    with torch.no_grad():
        assert_same_outputs(pyramid)
        assert batched_calls == [5]
        assert_same_outputs(pyramid[-2:])
        assert batched_calls == [5]
    # Above 1,024 tiles in all, consecutive levels are batched up to that many: 2 images of a
    # 320x320 pyramid are 800 + 200 + 50 + 18 + 8 tiles.
    batched_calls.clear()
    with torch.no_grad():
        assert_same_outputs([torch.randn(2, 128, size, size) for size in (80, 40, 20, 10, 5)])
    assert batched_calls == [2, 3]
    # With autograd the head's own path runs.
    batched_calls.clear()
    objectness, deltas = optimized(pyramid)
    (sum(t.sum() for t in objectness) + sum(t.sum() for t in deltas)).backward()
    assert batched_calls == [] and optimized.head.conv.conv.weight.grad is not None


def test_relus_right_after_convs_of_sequentials_rectify_in_place():
    torch.manual_seed(0)
    conv_relu = nn.Sequential(nn.Conv2d(4, 4, 3, padding=1), nn.ReLU())
    identity_relu = nn.Sequential(nn.Identity(), nn.ReLU())  # would rectify its input
    model = nn.Sequential(conv_relu, identity_relu).eval()
    x = torch.randn(2, 4, 8, 8)
    with torch.no_grad():
        expected = model(x.clone())
        optimize_for_inference(model, device="cpu")
        assert conv_relu[1].inplace and not identity_relu[1].inplace
        unchanged = x.clone()
        torch.testing.assert_close(conv_relu(x), expected, rtol=0, atol=1e-5)
        assert torch.equal(x, unchanged)


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
        for layer in (
            model.roi_heads.box_predictor.cls_score,
            model.roi_heads.box_predictor.bbox_pred,
        ):
            layer.weight.normal_(0, 0.01, generator=generator)
            layer.bias.normal_(0, 0.1, generator=generator)
    return model


@pytest.mark.parametrize(
    "config",
    [CONFIG_DIR / "keypoint_rcnn_mv3_fpn_320_edw.yaml", REALTIME_CONFIG,
     CONFIG_DIR / "cpu_demo_keypoint_rcnn_mv3_fpn_320_edw.yaml",
     CONFIG_DIR / "keypoint_rcnn_mv3_fpn_320_vanilla.yaml"],
    ids=lambda p: p.stem,
)  # fmt: skip
def test_optimized_model_gives_the_same_detections(config):
    cfg = fix_num_detections(load_config(config), 20)
    cfg.MODEL.DEVICE = "cpu"
    generator = torch.Generator().manual_seed(0)
    model = calibrated_model(cfg, generator)
    optimized = optimize_for_inference(copy.deepcopy(model))
    assert not any(isinstance(m, (nn.BatchNorm2d, FrozenBatchNorm2d)) for m in optimized.modules())
    kinds = [type(m).__name__ for m in optimized.modules()]
    num_head_convs = len(cfg.MODEL.ROI_KEYPOINT_HEAD.CONV_DIMS)
    edw_head = cfg.MODEL.ROI_KEYPOINT_HEAD.CONV_TYPE == "edw"
    assert kinds.count("SplitEDWConv") == (num_head_convs if edw_head else 0)
    assert kinds.count("ChannelsLastROIPooler") == 2  # box and keypoint heads
    box_head_is_fc_only = cfg.MODEL.ROI_BOX_HEAD.NUM_CONV == 0
    assert kinds.count("ChannelsLastFlattenLinear") == int(box_head_is_fc_only)
    # Winograd for the FPN's and RPN's convs if they are wide, and the vanilla head's.
    wide_fpn = cfg.MODEL.FPN.OUT_CHANNELS >= winograd.WinogradConv2d.min_channels
    vanilla_head = cfg.MODEL.ROI_KEYPOINT_HEAD.CONV_TYPE == "vanilla"
    assert kinds.count("WinogradConv2d") == (
        wide_fpn * (len(cfg.MODEL.FPN.IN_FEATURES) + 1) + vanilla_head * num_head_convs
    )
    assert kinds.count("LevelBatchedRPNHead") == wide_fpn
    head_relus = [m for m in optimized.roi_heads.keypoint_head.modules() if type(m) is nn.ReLU]
    assert len(head_relus) == num_head_convs and all(relu.inplace for relu in head_relus)
    assert_same_detections(model, optimized, generator)


def assert_same_detections(model, optimized, generator):
    """The same detections of two images, boxes and keypoints within 0.01 px."""
    inputs = [
        {"image": torch.randint(0, 256, (3, 240, 360), dtype=torch.uint8, generator=generator)},
        {"image": torch.randint(0, 256, (3, 320, 320), dtype=torch.uint8, generator=generator)},
    ]
    with torch.no_grad():
        expected, actual = model(inputs), optimized(inputs)
    for reference, result in zip(expected, actual):
        reference, result = reference["instances"], result["instances"]
        assert len(result) == len(reference) == 20
        assert torch.equal(result.pred_classes, reference.pred_classes)
        torch.testing.assert_close(result.scores, reference.scores, rtol=0, atol=1e-4)
        assert (result.pred_boxes.tensor - reference.pred_boxes.tensor).abs().max() <= 0.01
        keypoints, reference_keypoints = result.pred_keypoints, reference.pred_keypoints
        assert (keypoints[..., :2] - reference_keypoints[..., :2]).abs().max() <= 0.01
        torch.testing.assert_close(
            keypoints[..., 2], reference_keypoints[..., 2], rtol=1e-4, atol=1e-4
        )


def applied_rewrites(model):
    """name -> whether that rewrite of REWRITES changed ``model`` (an optimized EDW model)."""
    kinds = [type(m).__name__ for m in model.modules()]
    head_relus = [m for m in model.roi_heads.keypoint_head.modules() if type(m) is nn.ReLU]
    return {
        "fold_norms": not any(
            isinstance(m, (nn.BatchNorm2d, FrozenBatchNorm2d)) for m in model.modules()
        ),
        "split_edwconv": "SplitEDWConv" in kinds and "EDWConv" not in kinds,
        "channels_last_roi": "ChannelsLastROIPooler" in kinds,
        "winograd": "WinogradConv2d" in kinds and "LevelBatchedRPNHead" in kinds,
        "best_first_rpn": type(model.proposal_generator).__name__ == "BestFirstRPN",
        "inplace_relu": all(relu.inplace for relu in head_relus),
        "channels_last": any(p.dim() == 4 and not p.is_contiguous() for p in model.parameters()),
    }


@pytest.mark.parametrize("skipped", REWRITES)
def test_a_skipped_rewrite_leaves_its_modules_and_the_others_the_same_detections(skipped):
    cfg = fix_num_detections(load_config(CONFIG_DIR / "keypoint_rcnn_mv3_fpn_320_edw.yaml"), 20)
    cfg.MODEL.DEVICE = "cpu"
    generator = torch.Generator().manual_seed(0)
    model = calibrated_model(cfg, generator)
    assert not any(applied_rewrites(model).values())
    optimized = optimize_for_inference(copy.deepcopy(model), skip=(skipped,))
    applied = applied_rewrites(optimized)
    assert applied == {name: name != skipped for name in REWRITES}
    assert_same_detections(model, optimized, generator)
    assert all(applied_rewrites(optimize_for_inference(optimized)).values())


def test_unknown_rewrites_to_skip_are_an_error_that_names_the_rewrites():
    with pytest.raises(ValueError, match="'winograd_convs'.*fold_norms.*channels_last"):
        optimize_for_inference(nn.Sequential(nn.Conv2d(1, 1, 1)).eval(), skip=("winograd_convs",))
