"""optimize_for_inference changes how fast a model runs, not what it computes."""

import copy

import pytest
import torch
from torch import nn

from detectron2.layers import Conv2d, FrozenBatchNorm2d, ShapeSpec
from detectron2.modeling import build_model
from detectron2.modeling.backbone import Backbone
from detectron2.modeling.backbone.fpn import FPN
from detectron2.modeling.poolers import ROIPooler
from detectron2.structures import Boxes

from d2_edwpose.modeling.layers import DWConv, EDWConv
from d2_edwpose.modeling.cpu_inference import (
    REWRITES,
    fold_conv_norms,
    optimize_for_inference,
)
from d2_edwpose.modeling.cpu_inference.channels_last_roi import ChannelsLastROIPooler
from d2_edwpose.modeling.cpu_inference.edwconv_split import SplitEDWConv
from d2_edwpose.modeling.cpu_inference.module_replacement import replace_modules
from d2_edwpose.model_zoo import CONFIG_DIR, REALTIME_CONFIG
from d2_edwpose.modeling.analysis import analysis_config
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
    with torch.no_grad():  # inference: where NHWC maps take the in-place product
        torch.testing.assert_close(optimized(x), expected, rtol=1e-5, atol=1e-5)
        assert optimized(torch.zeros(0, 6, 7, 8)).shape == (0, 4, 7, 8)
    # Maps that are not NHWC (a split conv outside a channels-last model) are summed as such.
    split = SplitEDWConv(edw[0])
    torch.testing.assert_close(split(x.contiguous()), edw[0](x), rtol=1e-5, atol=1e-5)


def test_split_edwconv_sums_plain_convs_outside_eager_float32_inference():
    # In eager float32 inference NHWC maps accumulate in place (addmm_); traced (the exports),
    # with autograd or under autocast they are summed by convs and adds, which every exporter,
    # dtype and backward supports.
    torch.manual_seed(0)
    edw = EDWConv(6, 5, 3, padding=1, expand_factor=2).eval()
    split = SplitEDWConv(edw)
    x = torch.randn(2, 6, 7, 8).contiguous(memory_format=torch.channels_last)

    def in_place_products(run):
        with torch.profiler.profile() as profile:
            out = run()
        return out, sum(event.name == "aten::addmm_" for event in profile.events())

    with torch.no_grad():
        out, products = in_place_products(lambda: split(x))
        torch.testing.assert_close(out, edw(x), rtol=1e-5, atol=1e-5)
        assert products == 1
        assert "addmm" not in torch.jit.trace(split, x).inlined_graph.str()
    x.requires_grad_(True)
    out, products = in_place_products(lambda: split(x))
    assert products == 0
    (gradient,) = torch.autograd.grad(out.sum(), x)
    (expected,) = torch.autograd.grad(edw(x).sum(), x)
    torch.testing.assert_close(gradient, expected, rtol=1e-5, atol=1e-5)
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
        out, products = in_place_products(lambda: split(x))
        assert products == 0 and out.dtype == torch.bfloat16


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


class _Pooling(nn.Module):
    """detectron2's RoIAlign on one level, with the boxes as a tensor (so that it traces)."""

    def __init__(self):
        super().__init__()
        self.pooler = ROIPooler(7, [1 / 4], 0, "ROIAlignV2")

    def forward(self, features, boxes):
        return self.pooler([features], [Boxes(boxes)])


def _pooling_and_inputs():
    generator = torch.Generator().manual_seed(0)
    features = torch.randn(1, 16, 40, 40, generator=generator)
    return _Pooling().eval(), (features, random_boxes(generator, 30, 160).tensor)


def test_cpu_rewrites_trace_as_the_modules_they_replaced():
    # Exports trace the model: its graph must hold the original ops, valid for any input.
    model, inputs = _pooling_and_inputs()
    optimized = optimize_for_inference(copy.deepcopy(model), device="cpu")
    assert type(optimized.pooler).__name__ == "ChannelsLastROIPooler"
    with torch.no_grad():
        traced = torch.jit.trace(optimized, inputs)
        graph = str(traced.inlined_graph)
        assert "roi_align" in graph and "embedding_bag" not in graph
        torch.testing.assert_close(traced(*inputs), model(*inputs), rtol=1e-5, atol=1e-5)


def test_cpu_rewrites_leave_autocast_to_the_modules_they_replaced(monkeypatch):
    model, inputs = _pooling_and_inputs()
    optimized = optimize_for_inference(copy.deepcopy(model), device="cpu")
    assert type(optimized.pooler).__name__ == "ChannelsLastROIPooler"
    gathers = []
    monkeypatch.setattr(
        torch.nn.functional,
        "embedding_bag",
        lambda *args, **kwargs: gathers.append(args) or pytest.fail("the gather ran"),
    )
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
        expected, out = model(*inputs), optimized(*inputs)
    assert gathers == [] and out.dtype == expected.dtype
    torch.testing.assert_close(out, expected, rtol=0, atol=0)


def test_module_lists_that_forwards_iterate_are_updated():
    torch.manual_seed(0)
    fpn = FPN(bottom_up=_TwoLevelBackbone(), in_features=["c1", "c2"], out_channels=128).eval()
    x = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        expected = fpn(x)
        replace_modules(fpn, _copy_of_128_channel_conv)
        assert all(type(conv).__name__ == "_CopiedConv" for conv in fpn.output_convs)
        for name, features in fpn(x).items():
            torch.testing.assert_close(features, expected[name], rtol=1e-4, atol=1e-4)


class _CopiedConv(nn.Module):
    def __init__(self, conv):
        super().__init__()
        self.conv = copy.deepcopy(conv)

    def forward(self, x):
        return self.conv(x)


def _copy_of_128_channel_conv(module):
    if isinstance(module, nn.Conv2d) and module.out_channels == 128:
        return _CopiedConv(module)
    return None


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
    cfg = fix_num_detections(analysis_config(config), 20)
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
    return {
        "fold_norms": not any(
            isinstance(m, (nn.BatchNorm2d, FrozenBatchNorm2d)) for m in model.modules()
        ),
        "split_edwconv": "SplitEDWConv" in kinds and "EDWConv" not in kinds,
        "channels_last_roi": "ChannelsLastROIPooler" in kinds,
        "best_first_rpn": type(model.proposal_generator).__name__ == "BestFirstRPN",
        "channels_last": any(p.dim() == 4 and not p.is_contiguous() for p in model.parameters()),
    }


@pytest.mark.parametrize("skipped", REWRITES)
def test_a_skipped_rewrite_leaves_its_modules_and_the_others_the_same_detections(skipped):
    cfg = fix_num_detections(analysis_config(CONFIG_DIR / "keypoint_rcnn_mv3_fpn_320_edw.yaml"), 20)
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
    with pytest.raises(ValueError, match="'no_such'.*fold_norms.*channels_last"):
        optimize_for_inference(nn.Sequential(nn.Conv2d(1, 1, 1)).eval(), skip=("no_such",))
