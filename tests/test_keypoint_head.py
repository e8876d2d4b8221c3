"""DWConv / EDWConv and the keypoint head built on them (Sec. III of the paper)."""
import math

import pytest
import torch
import torch.nn.functional as F
from fvcore.nn import FlopCountAnalysis
from torch import nn

from detectron2.layers import Conv2d, ShapeSpec
from detectron2.modeling.roi_heads.keypoint_head import (
    KRCNNConvDeconvUpsampleHead,
    build_keypoint_head,
)
from detectron2.structures import Boxes, Instances, Keypoints
from detectron2.utils.events import EventStorage

import d2_edwpose.modeling  # noqa: F401 (registers the head)
from d2_edwpose.modeling.layers import DWConv, EDWConv, conv_class_of_type
from d2_edwpose.modeling.roi_heads import KRCNNConfigurableConvDeconvUpsampleHead

from conftest import defaults_with, num_parameters

HEAD_NAME = "KRCNNConfigurableConvDeconvUpsampleHead"
ROI_SHAPE = ShapeSpec(channels=256, width=14, height=14)
NUM_KEYPOINTS = 17
CONV_TYPES = ["vanilla", "dw", "edw"]


def separable_conv(in_channels, out_channels, kernel_size, expand_factor, **kwargs):
    if expand_factor == 1:
        return DWConv(in_channels, out_channels, kernel_size, **kwargs)
    return EDWConv(in_channels, out_channels, kernel_size, expand_factor=expand_factor, **kwargs)


def keypoint_cfg(conv_type, conv_dims=(512,) * 8, expand_factor=2):
    return defaults_with(
        "MODEL.ROI_KEYPOINT_HEAD",
        NAME=HEAD_NAME,
        CONV_TYPE=conv_type,
        CONV_DIMS=conv_dims,
        EXPAND_FACTOR=expand_factor,
    )


# --- DWConv / EDWConv --------------------------------------------------------------------------


def test_an_unknown_conv_type_is_an_error_naming_the_types():
    with pytest.raises(ValueError, match="'sep'.*vanilla.*dw.*edw"):
        conv_class_of_type("sep", 2)


@pytest.mark.parametrize(
    "h, w, d_i, d_j, k, e",
    [
        (14, 14, 256, 512, 3, 1),
        (14, 14, 256, 512, 3, 2),
        (7, 9, 32, 48, 3, 4),
        (10, 6, 16, 24, 5, 1),
        (10, 6, 16, 24, 5, 3),
        (8, 8, 24, 8, 1, 2),
    ],
)
def test_flops_match_the_paper_formulas(h, w, d_i, d_j, k, e):
    conv = separable_conv(d_i, d_j, k, e, padding=k // 2, bias=False)
    flops = FlopCountAnalysis(conv, torch.zeros(1, d_i, h, w))
    # DWConv (e = 1): h*w*d_i*(k^2 + d_j); EDWConv: h*w*e*d_i*(k^2 + d_j).
    assert flops.total() == h * w * e * d_i * (k * k + d_j)
    assert flops.by_module()["depthwise"] == h * w * e * d_i * k * k
    assert flops.by_module()["pointwise"] == h * w * e * d_i * d_j


@pytest.mark.parametrize("e", [1, 3])
@pytest.mark.parametrize(
    "kernel_size, stride, padding, dilation",
    [(3, 1, 1, 1), (3, 2, 1, 1), (3, 2, 2, 2), (5, 2, 0, 1)],
)
def test_equals_the_vanilla_conv_it_factorizes(e, kernel_size, stride, padding, dilation):
    # An (E)DWConv is linear up to its norm and activation, so it equals the vanilla conv whose
    # weight for input channel c sums the pointwise-weighted filters of c's e depthwise
    # channels (c*e .. c*e+e-1). This pins down the grouping, the conv arguments, and that
    # norm and activation come after the pointwise conv.
    torch.manual_seed(0)
    d_i, d_j = 6, 10
    norm = nn.GroupNorm(2, d_j)
    nn.init.normal_(norm.weight)
    nn.init.normal_(norm.bias)
    conv_args = dict(
        stride=stride, padding=padding, dilation=dilation, norm=norm, activation=F.relu
    )
    conv = separable_conv(d_i, d_j, kernel_size, e, **conv_args)
    nn.init.normal_(conv.pointwise.bias)
    depthwise = conv.depthwise.weight.reshape(d_i, e, kernel_size, kernel_size)
    pointwise = conv.pointwise.weight.reshape(d_j, d_i, e)
    vanilla = Conv2d(d_i, d_j, kernel_size, **conv_args)
    with torch.no_grad():
        vanilla.weight.copy_(torch.einsum("oce,cexy->ocxy", pointwise, depthwise))
        vanilla.bias.copy_(conv.pointwise.bias)

    x = torch.randn(3, d_i, 13, 11)
    out = conv(x)
    assert out.min() >= 0
    torch.testing.assert_close(out, vanilla(x), rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("e", [1, 2])
def test_structure_and_parameters(e):
    d_i, d_j, k = 8, 12, 3
    conv = separable_conv(d_i, d_j, k, e, padding=1)
    assert conv.depthwise.groups == d_i
    assert conv.depthwise.weight.shape == (e * d_i, 1, k, k)
    assert conv.depthwise.bias is None  # redundant before the linear pointwise conv
    assert conv.pointwise.weight.shape == (d_j, e * d_i, 1, 1)
    assert num_parameters(conv) == e * d_i * (k * k + d_j) + d_j
    assert num_parameters(separable_conv(d_i, d_j, k, e, bias=False)) == e * d_i * (k * k + d_j)


@pytest.mark.parametrize("e", [1, 2])
@pytest.mark.parametrize("stride", [1, 2])
@pytest.mark.parametrize("batch", [0, 2])
@pytest.mark.parametrize("training", [True, False])
def test_output_shapes_including_empty_batches(e, stride, batch, training):
    conv = separable_conv(16, 32, 3, e, stride=stride, padding=1, activation=F.relu)
    conv.train(training)
    x = torch.randn(batch, 16, 14, 14, requires_grad=True)
    out = conv(x)
    side = 14 // stride
    assert out.shape == (batch, 32, side, side)
    out.sum().backward()
    assert x.grad.shape == x.shape


@pytest.mark.parametrize("expand_factor", [0, -1, 1.5, 2.0, True])
def test_edwconv_rejects_bad_expand_factors(expand_factor):
    with pytest.raises(ValueError, match="expand_factor must be an integer >= 1"):
        EDWConv(8, 8, 3, expand_factor=expand_factor)


# --- the keypoint head -------------------------------------------------------------------------


def expected_num_parameters(conv_type, conv_dims, expand_factor, in_channels=256):
    total, d_i = 0, in_channels
    for d_j in conv_dims:
        e = {"vanilla": None, "dw": 1, "edw": expand_factor}[conv_type]
        weights = d_i * d_j * 9 if e is None else e * d_i * (9 + d_j)
        total += weights + d_j
        d_i = d_j
    return total + d_i * NUM_KEYPOINTS * 4 * 4 + NUM_KEYPOINTS  # score_lowres


@pytest.mark.parametrize("conv_dims", [(512,) * 8, (128,) * 4])
def test_vanilla_head_has_the_stock_heads_parameters(conv_dims):
    cfg = keypoint_cfg("vanilla", conv_dims)
    head = build_keypoint_head(cfg, ROI_SHAPE)
    stock = KRCNNConvDeconvUpsampleHead(cfg, ROI_SHAPE)
    assert isinstance(head, KRCNNConfigurableConvDeconvUpsampleHead)
    assert {k: v.shape for k, v in head.state_dict().items()} == {
        k: v.shape for k, v in stock.state_dict().items()
    }
    assert num_parameters(head) == num_parameters(stock)
    assert num_parameters(head) == expected_num_parameters("vanilla", conv_dims, None)


@pytest.mark.parametrize("conv_type, expand_factor", [("dw", 1), ("dw", 3), ("edw", 2), ("edw", 3)])
@pytest.mark.parametrize("conv_dims", [(512,) * 8, (128,) * 4])
def test_separable_head_parameter_count(conv_type, expand_factor, conv_dims):
    head = build_keypoint_head(keypoint_cfg(conv_type, conv_dims, expand_factor), ROI_SHAPE)
    conv_class = DWConv if conv_type == "dw" else EDWConv
    assert all(type(getattr(head, f"conv_fcn{i}")) is conv_class for i in (1, len(conv_dims)))
    # EXPAND_FACTOR only matters to "edw".
    assert num_parameters(head) == expected_num_parameters(conv_type, conv_dims, expand_factor)


@pytest.mark.parametrize("conv_type", CONV_TYPES)
def test_heatmaps_and_inference(conv_type):
    torch.manual_seed(0)
    head = build_keypoint_head(keypoint_cfg(conv_type, (128,) * 4), ROI_SHAPE).eval()
    x = torch.randn(5, 256, 14, 14)
    with torch.no_grad():
        assert head.layers(x).shape == (5, NUM_KEYPOINTS, 56, 56)
        instances = [Instances((320, 320)), Instances((320, 320))]
        instances[0].pred_boxes = Boxes(torch.tensor([[10.0, 20, 110, 220]] * 3))
        instances[1].pred_boxes = Boxes(torch.tensor([[0.0, 0, 50, 80]] * 2))
        instances = head(x, instances)
    assert [i.pred_keypoints.shape for i in instances] == [(3, 17, 3), (2, 17, 3)]
    assert [i.pred_keypoint_heatmaps.shape for i in instances] == [(3, 17, 56, 56), (2, 17, 56, 56)]


@pytest.mark.parametrize("conv_type", CONV_TYPES)
@pytest.mark.parametrize("training", [True, False])
def test_head_takes_zero_rois(conv_type, training):
    head = build_keypoint_head(keypoint_cfg(conv_type, (128,) * 4), ROI_SHAPE).train(training)
    assert head.layers(torch.zeros(0, 256, 14, 14)).shape == (0, NUM_KEYPOINTS, 56, 56)


@pytest.mark.parametrize("conv_type", CONV_TYPES)
def test_xavier_initialization(conv_type):
    torch.manual_seed(0)
    head = build_keypoint_head(keypoint_cfg(conv_type), ROI_SHAPE)
    convs = [m for m in head.modules() if isinstance(m, (nn.Conv2d, nn.ConvTranspose2d))]
    # Every parameter is a conv's weight or bias, all checked below.
    assert sum(num_parameters(conv) for conv in convs) == num_parameters(head)
    for conv in convs:
        # Glorot & Bengio: U(-a, a), a = sqrt(6 / (fan_in + fan_out)), std a / sqrt(3), with
        # per-group fans: a depthwise conv's are k^2 and e * k^2, not torch's k^2 and e*d_i*k^2.
        # The stock head's MSRA init (normal, std sqrt(2 / fan_out)) fails every check.
        receptive_field = conv.kernel_size[0] * conv.kernel_size[1]
        fan_in = conv.in_channels // conv.groups * receptive_field
        fan_out = conv.out_channels // conv.groups * receptive_field
        bound = math.sqrt(6 / (fan_in + fan_out))
        weight = conv.weight.detach()
        assert weight.abs().max() <= bound
        if weight.numel() >= 4000:
            assert weight.abs().max() >= 0.99 * bound
            assert weight.std().item() == pytest.approx(bound / math.sqrt(3), rel=0.05)
            assert weight.mean().abs() < 0.05 * bound
        if conv.bias is not None:
            assert torch.all(conv.bias == 0)
    if conv_type != "vanilla":  # the depthwise fans really are per group
        depthwise = head.conv_fcn2.depthwise.weight
        e = 1 if conv_type == "dw" else 2
        assert depthwise.std().item() == pytest.approx(math.sqrt(2 / (9 + e * 9)), rel=0.05)


@pytest.mark.parametrize(
    "conv_type, expand_factor, key, allowed",
    [
        ("separable", 2, "MODEL.ROI_KEYPOINT_HEAD.CONV_TYPE", "'vanilla', 'dw', 'edw'"),
        ("EDW", 2, "MODEL.ROI_KEYPOINT_HEAD.CONV_TYPE", "'vanilla', 'dw', 'edw'"),
        ("edw", 0, "MODEL.ROI_KEYPOINT_HEAD.EXPAND_FACTOR", "an integer >= 1"),
        ("edw", 1.5, "MODEL.ROI_KEYPOINT_HEAD.EXPAND_FACTOR", "an integer >= 1"),
        ("vanilla", 0, "MODEL.ROI_KEYPOINT_HEAD.EXPAND_FACTOR", "an integer >= 1"),
    ],
)
def test_bad_config_fails_when_the_head_is_built(conv_type, expand_factor, key, allowed):
    cfg = keypoint_cfg(conv_type, (128,) * 4, expand_factor)
    with pytest.raises(ValueError) as error:
        build_keypoint_head(cfg, ROI_SHAPE)
    message = str(error.value)
    bad_value = conv_type if key.endswith("CONV_TYPE") else expand_factor
    assert key in message and allowed in message and repr(bad_value) in message


def fake_proposals(image_size, boxes, generator):
    """Proposals with ground-truth keypoints, all visible and inside their box."""
    boxes = torch.tensor(boxes, dtype=torch.float32)
    corner, size = boxes[:, None, :2], boxes[:, None, 2:] - boxes[:, None, :2]
    xy = corner + torch.rand(len(boxes), NUM_KEYPOINTS, 2, generator=generator) * size
    proposals = Instances(image_size)
    proposals.proposal_boxes = Boxes(boxes)
    proposals.gt_keypoints = Keypoints(torch.cat([xy, torch.full_like(xy[..., :1], 2)], dim=2))
    return proposals


@pytest.mark.parametrize("conv_type", CONV_TYPES)
def test_training_step_reaches_every_parameter(conv_type):
    generator = torch.Generator().manual_seed(0)
    torch.manual_seed(0)
    head = build_keypoint_head(keypoint_cfg(conv_type, (128,) * 4), ROI_SHAPE).train()
    proposals = [
        fake_proposals((320, 320), [[10, 20, 110, 220], [150, 30, 300, 310]], generator),
        fake_proposals((320, 320), [[0, 0, 64, 128]], generator),
    ]
    features = torch.randn(3, 256, 14, 14, generator=generator)
    with EventStorage():
        losses = head(features, proposals)
    assert set(losses) == {"loss_keypoint"}
    loss = losses["loss_keypoint"]
    # Normalized by the visible keypoints, the loss starts near that of uniform heatmaps.
    assert torch.isfinite(loss) and loss.item() == pytest.approx(math.log(56 * 56), rel=0.1)
    loss.backward()
    for name, param in head.named_parameters():
        assert param.grad is not None and torch.isfinite(param.grad).all(), name
        assert param.grad.abs().sum() > 0, name


def test_decoding_equals_detectron2s_exactly():
    from detectron2.modeling.roi_heads.keypoint_head import (
        keypoint_rcnn_inference as stock_inference,
    )
    from detectron2.structures.keypoints import heatmaps_to_keypoints as stock_decoding

    from d2_edwpose.modeling.roi_heads.keypoint_decoding import (
        heatmaps_to_keypoints,
        keypoint_rcnn_inference,
    )

    generator = torch.Generator().manual_seed(0)
    maps = torch.randn(6, NUM_KEYPOINTS, 56, 56, generator=generator) * 4
    maps[0, 3] = 0.0  # a flat map: every pixel ties, the first one wins in both
    boxes = torch.tensor(
        [[10.0, 20, 110.5, 220.2], [0, 0, 0.5, 0.4], [5, 5, 300, 40], [7.3, 2.1, 9.9, 319], [0, 0, 320, 320], [50, 60, 51, 61]]
    )  # fmt: skip
    expected = stock_decoding(maps, boxes)
    assert torch.equal(heatmaps_to_keypoints(maps, boxes), expected)
    assert torch.equal(torch.jit.script(heatmaps_to_keypoints)(maps, boxes), expected)

    stock, ours = [Instances((320, 320)), Instances((320, 320))], [
        Instances((320, 320)),
        Instances((320, 320)),
    ]
    for instances in (stock, ours):
        instances[0].pred_boxes = Boxes(boxes[:4])
        instances[1].pred_boxes = Boxes(boxes[4:])
    stock_inference(maps, stock)
    keypoint_rcnn_inference(maps, ours)
    for reference, result in zip(stock, ours):
        assert torch.equal(result.pred_keypoints, reference.pred_keypoints)
        assert torch.equal(result.pred_keypoint_heatmaps, reference.pred_keypoint_heatmaps)


def test_traced_decoding_follows_the_number_of_detections():
    from d2_edwpose.modeling.roi_heads.keypoint_decoding import keypoint_rcnn_inference

    def decode(maps, boxes):
        instances = Instances((320, 320))
        instances.pred_boxes = Boxes(boxes)
        keypoint_rcnn_inference(maps, [instances])
        return instances.pred_keypoints

    generator = torch.Generator().manual_seed(0)
    corners = torch.rand(5, 2, generator=generator) * 100
    boxes = torch.cat([corners, corners + 50], dim=1)
    maps = torch.randn(5, NUM_KEYPOINTS, 56, 56, generator=generator)
    traced = torch.jit.trace(decode, (maps[:2], boxes[:2]), check_trace=False)
    assert torch.equal(traced(maps, boxes), decode(maps, boxes))
