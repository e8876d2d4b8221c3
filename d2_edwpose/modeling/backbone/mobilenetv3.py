"""MobileNetV3 (:paper:`MobileNetV3`) as a detectron2 backbone: torchvision's, with named outputs.

The network is the ``features`` of torchvision's ``mobilenet_v3_large`` / ``mobilenet_v3_small``
(built by those functions, without weights), so that its state-dict keys are torchvision's
without the classifier: ``features.<i>.<...>`` here is ``features.<i>.<...>`` there, and
torchvision's ImageNet weights load once renamed (:mod:`d2_edwpose.modeling.backbone.torchvision_weights`).

Outputs are named by stride, after the last layer at that stride. With torchvision's indices:

======  ======  ======================  ======================
output  stride  large: ``features[i]``  small: ``features[i]``
======  ======  ======================  ======================
(stem)  2       0                       0
stage2  4       1 ... 3                 1
stage3  8       4 ... 6                 2 ... 3
stage4  16      7 ... 12                4 ... 8
stage5  32      13 ... 16               9 ... 12
======  ======  ======================  ======================

stage5 ends with the final 1x1 convolution (to 960 / 576 channels at width 1.0), as in
torchvision's detection models. The stem is the first convolution only: it is what
detectron2's ``MODEL.BACKBONE.FREEZE_AT`` = 1 freezes, like ResNet's stem; large's
features[1] (stride 2, no downsampling) opens stage2.
"""
import math
from numbers import Real

import torch
from torch import nn
from torchvision.models import mobilenet_v3_large, mobilenet_v3_small
from torchvision.ops.misc import Conv2dNormActivation

from detectron2.layers import FrozenBatchNorm2d, ShapeSpec, get_norm
from detectron2.modeling.backbone import BACKBONE_REGISTRY, Backbone
from detectron2.modeling.backbone.fpn import FPN, LastLevelMaxPool

from ...utils.validation import check_config_value, is_int

__all__ = [
    "MobileNetV3",
    "ARCHS",
    "build_mobilenetv3_backbone",
    "build_mobilenetv3_fpn_backbone",
]

# MODEL.MOBILENETV3.ARCH -> torchvision's builder of that network.
ARCHS = {"large": mobilenet_v3_large, "small": mobilenet_v3_small}

# The stem, then the outputs, by stride. FREEZE_AT = k freezes the first k of these.
_STAGE_STRIDES = {"stem": 2, "stage2": 4, "stage3": 8, "stage4": 16, "stage5": 32}
_STAGE_NAMES = tuple(_STAGE_STRIDES)
_STAGE_AT_STRIDE = {stride: name for name, stride in _STAGE_STRIDES.items()}
_OUTPUT_NAMES = _STAGE_NAMES[1:]

# torchvision's BatchNorm eps for MobileNetV3: part of what its ImageNet weights compute.
# The momentum stays PyTorch's 0.1, that of detectron2's other BatchNorms, not torchvision's
# 0.01: that was tuned for ImageNet's 600 epochs, and over a detection schedule of a few
# hundred iterations it leaves the running statistics weighted towards the first iterations'
# (from scratch, orders of magnitude off), so that the model evaluates unlike it trained.
_BN_EPS = 0.001
# detectron2's GN uses 32 groups, which do not divide most of MobileNetV3's channel counts
# (multiples of 8: 16, 24, 40, ...); those layers use gcd(32, channels) groups, the largest
# power of two up to 32 that divides them (16 channels: 16 groups of one channel each).
_GN_GROUPS = 32


def _norm_layer(norm):
    """The ``norm_layer`` of torchvision's MobileNetV3 for ``norm``: channels -> norm module.

    "" gives ``nn.Identity``, which :func:`_features` then removes (torchvision's MobileNetV3
    replaces a ``norm_layer`` of None by its own BatchNorm).
    """

    def make(channels):
        if not norm:
            return nn.Identity()
        if norm == "FrozenBN":
            # Built here rather than by get_norm: its identity initialisation,
            # running_var = 1 - eps, depends on eps.
            return FrozenBatchNorm2d(channels, eps=_BN_EPS)
        if norm == "GN":
            return nn.GroupNorm(math.gcd(_GN_GROUPS, channels), channels)
        layer = get_norm(norm, channels)
        if isinstance(layer, nn.modules.batchnorm._BatchNorm):
            layer.eps = _BN_EPS
        return layer

    return make


def _features(arch, width_mult, in_channels, norm):
    """torchvision's ``mobilenet_v3_<arch>(width_mult=...).features`` on ``in_channels`` inputs,
    with ``norm``; :meth:`MobileNetV3._init_weights` initialises it."""
    # The builder also makes (and initialises) the ImageNet classifier, which is dropped: its
    # random draws are undone, so that a seed gives the weights of building the features alone.
    with torch.random.fork_rng(devices=[]):
        network = ARCHS[arch](weights=None, width_mult=width_mult, norm_layer=_norm_layer(norm))
        features = network.features
        if in_channels != 3:  # torchvision's stem takes RGB
            stem = features[0][0]
            features[0][0] = nn.Conv2d(
                in_channels,
                stem.out_channels,
                stem.kernel_size,
                stride=stem.stride,
                padding=stem.padding,
                bias=False,
            )
        if not norm:
            # Without a norm, torchvision's convolutions have a bias: as torchvision would build
            # them given no norm_layer, the Identity goes and the convolution gets a bias.
            blocks = [m for m in features.modules() if isinstance(m, Conv2dNormActivation)]
            for block in blocks:
                del block[1]
                block[0].bias = nn.Parameter(torch.empty(block[0].out_channels))
    # The draws of building the convolutions, in the order they are built.
    for module in features.modules():
        if isinstance(module, nn.Conv2d):
            module.reset_parameters()
    return features


class MobileNetV3(Backbone):
    """torchvision's MobileNetV3 feature extractor with detectron2's named, strided outputs.

    The arguments mirror the keys of ``cfg.MODEL.MOBILENETV3`` (and ``freeze_at``
    ``MODEL.BACKBONE.FREEZE_AT``), which the builders check. See the module docstring for the
    layout and the outputs.
    """

    def __init__(
        self,
        arch="large",
        *,
        width_mult=1.0,
        in_channels=3,
        out_features=_OUTPUT_NAMES,
        freeze_at=0,
        norm="FrozenBN",
    ):
        """
        Args:
            arch (str): "large" or "small".
            width_mult (float): channel multiplier, rounded as torchvision does.
            in_channels (int): channels of the input image.
            out_features (list[str]): outputs to return, from "stage2" ... "stage5". Layers
                after the last of them are not kept.
            freeze_at (int): 0 trains everything, 1 freezes the stem, k >= 2 the stem and
                stage2 ... stage<k> (detectron2's ``MODEL.BACKBONE.FREEZE_AT``); see
                :meth:`freeze`.
            norm (str): a norm of detectron2's ``get_norm``, with torchvision's BatchNorm eps
                and PyTorch's momentum (see ``_BN_EPS``); "GN" uses at most 32 groups (see
                ``_GN_GROUPS``); "" none.
        """
        super().__init__()
        layers = _features(arch, width_mult, in_channels, norm)

        # A stage ends with its last layer at its stride. Large's features[1] runs at stride 2
        # without downsampling (small's downsamples to 4): it opens stage2 in both.
        self._stage_ends = {"stem": 0}
        stride = _STAGE_STRIDES["stem"]
        for index, layer in enumerate(layers[1:], start=1):
            stride *= max(m.stride[0] for m in layer.modules() if isinstance(m, nn.Conv2d))
            self._stage_ends[_STAGE_AT_STRIDE[max(stride, _STAGE_STRIDES["stage2"])]] = index

        # Like detectron2's ResNet, leave out layers no output needs: unused parameters break
        # DistributedDataParallel.
        self._out_features = [name for name in _OUTPUT_NAMES if name in out_features]
        last = self._stage_ends[self._out_features[-1]]
        self.features = layers[: last + 1]

        self._out_feature_channels = {
            name: layers[self._stage_ends[name]].out_channels for name in self._out_features
        }
        self._out_feature_strides = {name: _STAGE_STRIDES[name] for name in self._out_features}
        self._return_at = {self._stage_ends[name]: name for name in self._out_features}

        self._init_weights()
        self.freeze(freeze_at)

    def _init_weights(self):
        # torchvision's MobileNetV3 initialisation, for training from scratch.
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out")
                if m.bias is not None:
                    nn.init.zeros_(m.bias)
            elif isinstance(m, (nn.modules.batchnorm._BatchNorm, nn.GroupNorm)):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)

    def freeze(self, freeze_at=0):
        """Freeze the stem (``freeze_at`` >= 1) and stage2 ... stage<freeze_at>.

        Frozen layers get ``requires_grad=False`` and their BatchNorms become
        :class:`FrozenBatchNorm2d`, as detectron2's ResNet does.

        Returns:
            MobileNetV3: self.
        """
        if freeze_at == 0:
            return self
        last = self._stage_ends[_STAGE_NAMES[freeze_at - 1]]
        for layer in self.features[: last + 1]:
            layer.requires_grad_(False)
            # In place: a layer is a block, never a BatchNorm itself.
            FrozenBatchNorm2d.convert_frozen_batchnorm(layer)
        return self

    def forward(self, x):
        """
        Args:
            x: Tensor of shape (N, C, H, W); H and W multiples of 32 give exact strides.

        Returns:
            dict[str->Tensor]: the ``out_features``.
        """
        outputs = {}
        for index, layer in enumerate(self.features):
            x = layer(x)
            if index in self._return_at:
                outputs[self._return_at[index]] = x
        return outputs


def _is_norm(name):
    if name == "":
        return True
    try:
        get_norm(name, 32)
    except KeyError:
        return False
    return True


def _mobilenetv3_from_config(cfg, input_shape: ShapeSpec) -> MobileNetV3:
    """The MobileNetV3 of ``cfg.MODEL.MOBILENETV3`` and ``MODEL.BACKBONE.FREEZE_AT``, whose
    values are checked here, once, for both builders."""
    mcfg = cfg.MODEL.MOBILENETV3
    check_config_value(
        "MODEL.MOBILENETV3.ARCH", mcfg.ARCH, mcfg.ARCH in ARCHS, " or ".join(map(repr, ARCHS))
    )
    width = mcfg.WIDTH_MULT
    check_config_value(
        "MODEL.MOBILENETV3.WIDTH_MULT",
        width,
        isinstance(width, Real) and math.isfinite(width) and width > 0,
        "a positive number (1.0 for the ImageNet weights)",
    )
    features = list(mcfg.OUT_FEATURES)
    check_config_value(
        "MODEL.MOBILENETV3.OUT_FEATURES",
        features,
        features and set(features) <= set(_OUTPUT_NAMES) and len(set(features)) == len(features),
        f"a non-empty list of distinct names from {list(_OUTPUT_NAMES)}",
    )
    check_config_value(
        "MODEL.MOBILENETV3.NORM",
        mcfg.NORM,
        _is_norm(mcfg.NORM),
        "a norm of detectron2's get_norm ('FrozenBN', 'BN', 'SyncBN', 'naiveSyncBN', 'GN') or ''",
    )
    freeze_at = cfg.MODEL.BACKBONE.FREEZE_AT
    check_config_value(
        "MODEL.BACKBONE.FREEZE_AT",
        freeze_at,
        is_int(freeze_at) and 0 <= freeze_at <= len(_STAGE_NAMES),
        f"an integer from 0 (train everything) to {len(_STAGE_NAMES)} (freeze all "
        "MobileNetV3 stages)",
    )
    return MobileNetV3(
        mcfg.ARCH,
        width_mult=width,
        in_channels=input_shape.channels,
        out_features=features,
        freeze_at=freeze_at,
        norm=mcfg.NORM,
    )


@BACKBONE_REGISTRY.register()
def build_mobilenetv3_backbone(cfg, input_shape: ShapeSpec):
    """
    Returns:
        MobileNetV3: configured by ``cfg.MODEL.MOBILENETV3``.
    """
    return _mobilenetv3_from_config(cfg, input_shape)


@BACKBONE_REGISTRY.register()
def build_mobilenetv3_fpn_backbone(cfg, input_shape: ShapeSpec):
    """detectron2's ``build_resnet_fpn_backbone`` with a MobileNetV3 bottom-up network.

    Returns:
        FPN: with FPN.IN_FEATURES = stage2 ... stage5, outputs p2 ... p6 (strides 4 ... 64).
    """
    bottom_up = _mobilenetv3_from_config(cfg, input_shape)
    in_features = list(cfg.MODEL.FPN.IN_FEATURES)
    outputs = bottom_up.output_shape()
    check_config_value(
        "MODEL.FPN.IN_FEATURES",
        in_features,
        set(in_features) <= set(outputs),
        f"outputs of the MobileNetV3, MODEL.MOBILENETV3.OUT_FEATURES={list(outputs)}",
    )
    return FPN(
        bottom_up=bottom_up,
        in_features=in_features,
        out_channels=cfg.MODEL.FPN.OUT_CHANNELS,
        norm=cfg.MODEL.FPN.NORM,
        top_block=LastLevelMaxPool(),
        fuse_type=cfg.MODEL.FPN.FUSE_TYPE,
    )
