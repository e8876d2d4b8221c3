"""MobileNetV3(-FPN) backbone and the torchvision weight converter."""
import math
import os
import pickle
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import torchvision
from torch import nn

import d2_edwpose.modeling.backbone  # noqa: F401 (registers the backbones)
from d2_edwpose.modeling.backbone.torchvision_weights import convert_torchvision_mobilenetv3
from d2_edwpose.tools.convert_torchvision_mobilenetv3 import main as convert_main
from detectron2.checkpoint import DetectionCheckpointer
from detectron2.layers import FrozenBatchNorm2d, ShapeSpec
from detectron2.modeling import BACKBONE_REGISTRY, build_backbone, build_model
from detectron2.structures import Boxes, Instances, Keypoints
from detectron2.utils.events import EventStorage

from conftest import defaults_with

REPO_ROOT = Path(__file__).resolve().parent.parent

STAGES = ["stage2", "stage3", "stage4", "stage5"]
STRIDES = {"stage2": 4, "stage3": 8, "stage4": 16, "stage5": 32}
# Written out from torchvision's architecture tables and its _make_divisible rounding.
CHANNELS = {
    ("large", 1.0): (24, 40, 112, 960),
    ("large", 0.75): (24, 32, 88, 720),
    ("small", 1.0): (16, 24, 48, 576),
    ("small", 0.75): (16, 24, 40, 432),
}
# Index in torchvision's `features` of the last layer of the stem and of each stage.
LAST_INDEX = {
    "large": {"stem": 0, "stage2": 3, "stage3": 6, "stage4": 12, "stage5": 16},
    "small": {"stem": 0, "stage2": 1, "stage3": 3, "stage4": 8, "stage5": 12},
}


def backbone_cfg(arch="large", width_mult=1.0, norm="FrozenBN", freeze_at=0, **mobilenetv3):
    """The defaults with the MobileNetV3-FPN backbone on CPU; ``mobilenetv3``: more
    ``MODEL.MOBILENETV3`` keys."""
    keys = dict(ARCH=arch, WIDTH_MULT=width_mult, NORM=norm, **mobilenetv3)
    cfg = defaults_with("MODEL.MOBILENETV3", **keys)
    cfg.MODEL.DEVICE = "cpu"
    cfg.MODEL.BACKBONE.NAME = "build_mobilenetv3_fpn_backbone"
    cfg.MODEL.BACKBONE.FREEZE_AT = freeze_at
    cfg.MODEL.FPN.IN_FEATURES = STAGES
    return cfg


def _detector_cfg(**kwargs):
    """detectron2's Base-RCNN-FPN with the MobileNetV3-FPN backbone, with narrower heads."""
    cfg = backbone_cfg(**kwargs)
    # The stock widths (256-channel FPN, 1024-wide box head) make CPU tests slow.
    cfg.MODEL.FPN.OUT_CHANNELS = 64
    cfg.MODEL.ROI_BOX_HEAD.FC_DIM = 256
    cfg.MODEL.ANCHOR_GENERATOR.SIZES = [[32], [64], [128], [256], [512]]
    cfg.MODEL.RPN.IN_FEATURES = ["p2", "p3", "p4", "p5", "p6"]
    cfg.MODEL.ROI_HEADS.NAME = "StandardROIHeads"
    cfg.MODEL.ROI_HEADS.IN_FEATURES = ["p2", "p3", "p4", "p5"]
    cfg.MODEL.ROI_BOX_HEAD.NAME = "FastRCNNConvFCHead"
    cfg.MODEL.ROI_BOX_HEAD.NUM_FC = 2
    cfg.MODEL.ROI_BOX_HEAD.POOLER_RESOLUTION = 7
    return cfg


def _bottom_up(cfg):
    return BACKBONE_REGISTRY.get("build_mobilenetv3_backbone")(cfg, ShapeSpec(channels=3))


def _layer_index(name):
    """features.<i>.... -> i"""
    return int(name.split(".")[1])


@pytest.mark.parametrize("arch,width_mult", sorted(CHANNELS))
def test_outputs_and_output_shape(arch, width_mult):
    backbone = _bottom_up(backbone_cfg(arch, width_mult))
    channels = dict(zip(STAGES, CHANNELS[arch, width_mult]))
    assert backbone.output_shape() == {
        name: ShapeSpec(channels=channels[name], stride=STRIDES[name]) for name in STAGES
    }
    with torch.no_grad():
        outputs = backbone(torch.randn(2, 3, 64, 96))
    assert list(outputs) == STAGES
    for name, x in outputs.items():
        assert x.shape == (2, channels[name], 64 // STRIDES[name], 96 // STRIDES[name]), name


def test_out_features_subset_drops_later_layers():
    backbone = _bottom_up(backbone_cfg("large", OUT_FEATURES=["stage3"]))
    assert set(backbone.output_shape()) == {"stage3"}
    assert len(backbone.features) == LAST_INDEX["large"]["stage3"] + 1
    with torch.no_grad():
        outputs = backbone(torch.randn(1, 3, 64, 64))
    assert list(outputs) == ["stage3"] and outputs["stage3"].shape == (1, 40, 8, 8)


@pytest.mark.parametrize("arch", ["large", "small"])
def test_fpn_backbone(arch):
    cfg = backbone_cfg(arch)
    cfg.MODEL.FPN.OUT_CHANNELS = 64
    backbone = build_backbone(cfg)
    levels = {f"p{k}": 2**k for k in range(2, 7)}
    assert backbone.output_shape() == {
        name: ShapeSpec(channels=64, stride=stride) for name, stride in levels.items()
    }
    assert backbone.size_divisibility == 32
    with torch.no_grad():
        outputs = backbone(torch.randn(1, 3, 64, 128))
    assert list(outputs) == list(levels)
    for name, stride in levels.items():
        assert outputs[name].shape == (1, 64, max(64 // stride, 1), 128 // stride), name


def test_keypoint_rcnn_trains_with_stock_rpn_and_roi_heads():
    cfg = _detector_cfg()
    cfg.MODEL.KEYPOINT_ON = True
    cfg.MODEL.ROI_HEADS.NUM_CLASSES = 1
    cfg.MODEL.ROI_KEYPOINT_HEAD.CONV_DIMS = (32, 32)  # the stock 8 x 512 is slow on CPU
    cfg.MODEL.ROI_HEADS.BATCH_SIZE_PER_IMAGE = 64
    model = build_model(cfg)
    instances = Instances((128, 128))
    instances.gt_boxes = Boxes(torch.tensor([[20.0, 10.0, 90.0, 120.0]]))
    instances.gt_classes = torch.tensor([0])
    keypoints = torch.rand(1, 17, 3) * torch.tensor([70.0, 110.0, 0.0]) + torch.tensor(
        [20.0, 10.0, 2.0]
    )
    instances.gt_keypoints = Keypoints(keypoints)
    image = torch.randint(0, 256, (3, 128, 128), dtype=torch.uint8)
    batch = [{"image": image, "instances": instances}]
    with EventStorage():
        losses = model(batch)
    assert {"loss_rpn_cls", "loss_rpn_loc", "loss_cls", "loss_box_reg", "loss_keypoint"} <= set(
        losses
    )
    assert all(torch.isfinite(loss) for loss in losses.values())
    sum(losses.values()).backward()
    # MODEL.BACKBONE.FREEZE_AT is 0: the gradient reaches the stem.
    assert model.backbone.bottom_up.features[0][0].weight.grad.abs().sum() > 0


def _randomise_batchnorm(model):
    """Give every BatchNorm non-trivial affine parameters and running statistics."""
    for module in model.modules():
        if isinstance(module, nn.BatchNorm2d):
            module.weight.data.uniform_(0.5, 1.5)
            module.bias.data.normal_(0.0, 0.2)
            module.running_mean.normal_(0.0, 0.2)
            module.running_var.uniform_(0.5, 2.0)


@pytest.mark.parametrize(
    "arch,width_mult,norm",
    [
        ("large", 1.0, "FrozenBN"),
        ("large", 1.0, "BN"),
        ("small", 1.0, "FrozenBN"),
        ("small", 1.0, "BN"),
        ("small", 0.75, "FrozenBN"),
    ],
)
def test_converted_torchvision_weights_reproduce_torchvision(tmp_path, arch, width_mult, norm):
    torch.manual_seed(0)
    reference = getattr(torchvision.models, f"mobilenet_v3_{arch}")(
        weights=None, width_mult=width_mult
    )
    _randomise_batchnorm(reference)
    reference.eval()
    # As a user's download of the published ImageNet weights: a plain state dict.
    pth = tmp_path / f"mobilenet_v3_{arch}.pth"
    torch.save(reference.state_dict(), pth)
    pkl = tmp_path / f"mobilenet_v3_{arch}.pkl"
    convert_main([str(pth), str(pkl)])
    assert sorted(os.listdir(tmp_path)) == sorted([pth.name, pkl.name])  # no temporary left

    with open(pkl, "rb") as f:
        checkpoint = pickle.load(f)
    assert checkpoint["__author__"] == "torchvision"
    assert checkpoint["matching_heuristics"] is False
    assert all(isinstance(v, np.ndarray) for v in checkpoint["model"].values())

    model = build_model(_detector_cfg(arch=arch, width_mult=width_mult, norm=norm))
    DetectionCheckpointer(model).load(str(pkl))
    model.eval()
    # Nothing unexpected, nothing of the MobileNetV3 missing (BN's counter aside).
    backbone_keys = {
        "backbone.bottom_up." + name
        for name in model.backbone.bottom_up.state_dict()
        if not name.endswith("num_batches_tracked")
    }
    assert set(checkpoint["model"]) == backbone_keys

    x = torch.randn(2, 3, 96, 128)
    with torch.no_grad():
        ours = model.backbone.bottom_up(x)
        expected = {}
        at_index = {LAST_INDEX[arch][name]: name for name in STAGES}
        for index, layer in enumerate(reference.features):
            x = layer(x)
            if index in at_index:
                expected[at_index[index]] = x
    for name in STAGES:
        assert ours[name].shape == expected[name].shape, name
        assert expected[name].abs().max() > 0.1, name  # a comparison of more than zeros
        assert (ours[name] - expected[name]).abs().max() < 1e-5, name


@pytest.mark.parametrize(
    "arch,freeze_at",
    [("large", k) for k in range(6)] + [("small", 2), ("small", 4)],
)
def test_freeze_at(arch, freeze_at):
    backbone = _bottom_up(backbone_cfg(arch, norm="BN", freeze_at=freeze_at))
    stage_ends = list(LAST_INDEX[arch].values())
    last_frozen = stage_ends[freeze_at - 1] if freeze_at else -1
    for name, param in backbone.named_parameters():
        assert param.requires_grad == (_layer_index(name) > last_frozen), name
    for name, module in backbone.named_modules():
        if isinstance(module, (nn.BatchNorm2d, FrozenBatchNorm2d)):
            frozen = _layer_index(name) <= last_frozen
            assert isinstance(module, FrozenBatchNorm2d if frozen else nn.BatchNorm2d), name
            assert module.eps == 0.001, name
    trainable = [p for p in backbone.parameters() if p.requires_grad]
    assert (len(trainable) == 0) == (freeze_at == 5)


@pytest.mark.parametrize(
    "norm,norm_type",
    [
        ("FrozenBN", FrozenBatchNorm2d),
        ("BN", nn.BatchNorm2d),
        ("SyncBN", nn.SyncBatchNorm),
        ("GN", nn.GroupNorm),
        ("", None),
    ],
)
def test_norm(norm, norm_type):
    cfg = backbone_cfg("small", norm=norm)
    cfg.MODEL.FPN.NORM = "GN" if norm == "GN" else ""
    backbone = build_backbone(cfg)
    norms = [
        m
        for m in backbone.bottom_up.modules()
        if isinstance(m, (nn.modules.batchnorm._NormBase, nn.GroupNorm, FrozenBatchNorm2d))
    ]
    if norm_type is None:
        assert norms == []
        convs = [m for m in backbone.bottom_up.modules() if isinstance(m, nn.Conv2d)]
        assert all(conv.bias is not None for conv in convs)
    else:
        # stem, expand / depthwise / project of each block, last conv
        assert len(norms) == 1 + 3 * 11 - 1 + 1  # small's features[1] does not expand
        assert all(isinstance(m, norm_type) for m in norms)
    if norm in ("BN", "SyncBN"):
        # torchvision's eps; PyTorch's momentum, as detectron2's other BatchNorms (why: the
        # backbone module's _BN_EPS comment; test_real_data.py shows the difference).
        assert all(m.eps == 0.001 and m.momentum == 0.1 for m in norms)
    if norm == "FrozenBN":
        assert all(m.eps == 0.001 for m in norms)
    if norm == "GN":
        assert all(m.num_groups == math.gcd(32, m.num_channels) for m in norms)
        assert any(isinstance(m, nn.GroupNorm) for m in backbone.fpn_lateral2.modules())
    # SyncBN needs a process group to train; in eval mode it runs anywhere.
    backbone.train(norm != "SyncBN")
    outputs = backbone(torch.randn(2, 3, 64, 64))
    assert all(torch.isfinite(x).all() for x in outputs.values())


def test_random_initialisation_is_torchvisions():
    torch.manual_seed(0)
    backbone = _bottom_up(backbone_cfg("large", norm="BN"))
    depthwise = backbone.features[13].block[1][0]  # 672 channels, 5 x 5, groups=672
    fan_out = depthwise.weight.shape[0] * 5 * 5  # kaiming_normal_'s mode="fan_out"
    assert depthwise.weight.std().item() == pytest.approx(math.sqrt(2 / fan_out), rel=0.05)
    squeeze_excitation = backbone.features[13].block[2]
    assert torch.all(squeeze_excitation.fc1.bias == 0)
    bn = backbone.features[13].block[1][1]
    assert torch.all(bn.weight == 1) and torch.all(bn.bias == 0)


@pytest.mark.parametrize(
    "key,value,message",
    [
        ("MOBILENETV3.ARCH", "medium", "MODEL.MOBILENETV3.ARCH='medium' is invalid: expected 'large' or 'small'"),
        ("BACKBONE.FREEZE_AT", 6, "MODEL.BACKBONE.FREEZE_AT=6 is invalid: expected an integer from 0 (train everything) to 5"),
        ("BACKBONE.FREEZE_AT", -1, "MODEL.BACKBONE.FREEZE_AT=-1"),
        ("BACKBONE.FREEZE_AT", 1.5, "MODEL.BACKBONE.FREEZE_AT=1.5"),
        ("MOBILENETV3.WIDTH_MULT", 0.0, "MODEL.MOBILENETV3.WIDTH_MULT=0.0 is invalid: expected a positive number"),
        ("MOBILENETV3.WIDTH_MULT", float("nan"), "MODEL.MOBILENETV3.WIDTH_MULT=nan"),
        ("MOBILENETV3.OUT_FEATURES", ["stage6"], "MODEL.MOBILENETV3.OUT_FEATURES=['stage6']"),
        ("MOBILENETV3.OUT_FEATURES", [], "MODEL.MOBILENETV3.OUT_FEATURES=[]"),
        ("MOBILENETV3.NORM", "XN", "MODEL.MOBILENETV3.NORM='XN'"),
    ],
)  # fmt: skip
def test_invalid_config(key, value, message):
    # The builder checks the keys it reads: every model built from the config
    # (build_model, DefaultPredictor, the trainer) gets the same errors.
    cfg = backbone_cfg()
    node, name = key.split(".")
    cfg.MODEL[node][name] = value
    with pytest.raises(ValueError) as error:
        _bottom_up(cfg)
    assert message in str(error.value)


def test_fpn_inputs_must_be_outputs():
    cfg = backbone_cfg(OUT_FEATURES=["stage3", "stage4", "stage5"])
    with pytest.raises(ValueError, match=r"MODEL\.FPN\.IN_FEATURES=\['stage2', .* is invalid"):
        build_backbone(cfg)
    cfg.MODEL.FPN.IN_FEATURES = ["stage3", "stage4", "stage5"]
    assert set(build_backbone(cfg).output_shape()) == {"p3", "p4", "p5", "p6"}


@pytest.mark.parametrize("norm", ["FrozenBN", ""])
def test_other_input_channels(norm):
    backbone = BACKBONE_REGISTRY.get("build_mobilenetv3_backbone")(
        backbone_cfg("small", norm=norm), ShapeSpec(channels=1)
    )
    stem = backbone.features[0][0]
    assert stem.weight.shape == (16, 1, 3, 3) and (stem.bias is None) == bool(norm)
    with torch.no_grad():
        outputs = backbone(torch.randn(1, 1, 64, 64))
    assert outputs["stage5"].shape == (1, 576, 2, 2)


def test_converter_accepts_wrapped_state_dicts():
    state_dict = torchvision.models.mobilenet_v3_small(weights=None).state_dict()
    converted = convert_torchvision_mobilenetv3(state_dict)
    assert list(converted) == [
        "backbone.bottom_up." + name
        for name in state_dict
        if not name.startswith("classifier.") and not name.endswith("num_batches_tracked")
    ]
    for wrapped in ({"model": state_dict}, {"state_dict": state_dict, "epoch": 3}):
        assert convert_torchvision_mobilenetv3(wrapped).keys() == converted.keys()


def test_converter_rejects_other_models(tmp_path):
    state_dict = torchvision.models.resnet18(weights=None).state_dict()
    with pytest.raises(ValueError, match="missing .* features.0.0.weight") as error:
        convert_torchvision_mobilenetv3(state_dict)
    assert "unexpected keys: conv1.weight" in str(error.value)

    pth = tmp_path / "resnet18.pth"
    torch.save(state_dict, pth)
    with pytest.raises(SystemExit) as exit_:
        convert_main([str(pth), str(tmp_path / "resnet18.pkl")])
    assert "features.0.0.weight" in exit_.value.code
    assert os.listdir(tmp_path) == [pth.name]

    with pytest.raises(SystemExit) as exit_:
        convert_main([str(pth), str(tmp_path / "resnet18.pth")])
    assert exit_.value.code == 2  # argparse: OUTPUT must be a .pkl


def test_converter_command_reports_missing_file(tmp_path):
    command = [
        sys.executable,
        "-m",
        "d2_edwpose.tools.convert_torchvision_mobilenetv3",
        str(tmp_path / "absent.pth"),
        str(tmp_path / "out.pkl"),
    ]
    result = subprocess.run(command, cwd=REPO_ROOT, capture_output=True, text=True)
    assert result.returncode == 1
    assert "absent.pth: no such file" in result.stderr
    assert not (tmp_path / "out.pkl").exists()
