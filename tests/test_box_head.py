"""The realtime config's light box head and the realtime config itself."""
import pytest
import torch

from detectron2.layers import Conv2d, ShapeSpec
from detectron2.modeling import build_model
from detectron2.modeling.roi_heads.box_head import FastRCNNConvFCHead, build_box_head
from detectron2.utils.events import EventStorage

from d2_edwpose.modeling.layers import DWConv, EDWConv
from d2_edwpose.modeling.roi_heads import FastRCNNConfigurableConvFCHead
from d2_edwpose.model_zoo import REALTIME_CONFIG
from d2_edwpose.modeling.analysis import analysis_config, analyze

from conftest import defaults_with, num_parameters
from test_model import non_square_input

ROI_SHAPE = ShapeSpec(channels=128, height=7, width=7)
HEAD_NAME = "FastRCNNConfigurableConvFCHead"


def box_cfg(conv_type, expand_factor=2):
    """The defaults with a box head like the realtime config's, narrower."""
    convs = dict(CONV_TYPE=conv_type, EXPAND_FACTOR=expand_factor, NUM_CONV=2, CONV_DIM=64)
    return defaults_with("MODEL.ROI_BOX_HEAD", NAME=HEAD_NAME, NUM_FC=1, FC_DIM=256, **convs)


@pytest.mark.parametrize("conv_type, expand_factor", [("dw", 1), ("edw", 2), ("edw", 3)])
def test_separable_convs_replace_the_stock_convs(conv_type, expand_factor):
    head = build_box_head(box_cfg(conv_type, expand_factor), ROI_SHAPE)
    assert isinstance(head, FastRCNNConfigurableConvFCHead)
    conv_class = DWConv if conv_type == "dw" else EDWConv
    assert [type(m) for m in head.conv_norm_relus] == [conv_class, conv_class]
    assert list(dict(head.named_children())) == ["conv1", "conv2", "flatten", "fc1", "fc_relu1"]
    e = 1 if conv_type == "dw" else expand_factor
    convs = e * 128 * (9 + 64) + 64 + e * 64 * (9 + 64) + 64
    assert num_parameters(head) == convs + 64 * 7 * 7 * 256 + 256
    torch.manual_seed(0)
    x = torch.randn(6, 128, 7, 7)
    assert head(x).shape == (6, 256) and head.output_shape.channels == 256
    assert (head(x) >= 0).all()  # ends with the fc ReLU
    assert head(torch.zeros(0, 128, 7, 7)).shape == (0, 256)


def test_vanilla_is_the_stock_head():
    cfg = box_cfg("vanilla")
    head = build_box_head(cfg, ROI_SHAPE)
    stock = FastRCNNConvFCHead(cfg, ROI_SHAPE)
    assert all(type(m) is Conv2d for m in head.conv_norm_relus)
    assert {k: v.shape for k, v in head.state_dict().items()} == {
        k: v.shape for k, v in stock.state_dict().items()
    }


def test_norm_goes_after_the_pointwise_conv():
    cfg = box_cfg("dw")
    cfg.MODEL.ROI_BOX_HEAD.NORM = "BN"
    head = build_box_head(cfg, ROI_SHAPE)
    assert isinstance(head.conv1.pointwise.norm, torch.nn.BatchNorm2d)
    assert head.conv1.pointwise.bias is None


@pytest.mark.parametrize(
    "key, value, message",
    [("CONV_TYPE", "separable", "MODEL.ROI_BOX_HEAD.CONV_TYPE"), ("EXPAND_FACTOR", 0, "EXPAND_FACTOR")],
)  # fmt: skip
def test_bad_values_name_the_key(key, value, message):
    cfg = box_cfg("edw")
    cfg.MODEL.ROI_BOX_HEAD[key] = value
    with pytest.raises(ValueError, match=message):
        build_box_head(cfg, ROI_SHAPE)


def test_realtime_config_is_light_and_trains():
    cfg = analysis_config(REALTIME_CONFIG)
    cfg.MODEL.DEVICE = "cpu"
    flops = analyze(cfg, "realtime")
    paper = analyze(
        analysis_config(REALTIME_CONFIG.with_name("keypoint_rcnn_mv3_fpn_320_edw.yaml")), "edw"
    )
    assert flops["test_proposals"] == 100 and paper["test_proposals"] == 1000
    assert flops["box_head_gflops_at_test"] < paper["box_head_gflops_at_test"] / 20
    assert flops["keypoint_head_gflops_per_roi"] < paper["keypoint_head_gflops_per_roi"] / 10

    torch.manual_seed(0)
    model = build_model(cfg)
    model.train()
    with EventStorage():
        losses = model([non_square_input(), non_square_input(300, 200)])
    assert all(torch.isfinite(v) for v in losses.values()), losses
    sum(losses.values()).backward()
    trainable = [(n, p) for n, p in model.named_parameters() if p.requires_grad]
    assert [n for n, p in trainable if p.grad is None] == []
    assert any(n.startswith("roi_heads.box_head.conv1.depthwise") for n, _ in trainable)
