"""MobileNetV3 (:paper:`MobileNetV3`) as a detectron2 backbone, layer for layer torchvision's.

The network is built from torchvision's own blocks (``InvertedResidual``,
``Conv2dNormActivation``, squeeze-excitation with hard-sigmoid) and kept in an
``nn.Sequential`` called ``features`` with torchvision's indices, so that its state-dict keys
are exactly those of torchvision's ``mobilenet_v3_large`` / ``mobilenet_v3_small`` without
the classifier: ``features.<i>.<...>`` here is ``features.<i>.<...>`` there.

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

from torch import nn
from torchvision.models.mobilenetv3 import InvertedResidual, InvertedResidualConfig
from torchvision.ops.misc import Conv2dNormActivation

from detectron2.layers import FrozenBatchNorm2d, ShapeSpec, get_norm
from detectron2.modeling.backbone import BACKBONE_REGISTRY, Backbone
from detectron2.modeling.backbone.fpn import FPN, LastLevelMaxPool

__all__ = [
    "MobileNetV3",
    "ARCHS",
    "BACKBONE_NAMES",
    "build_mobilenetv3_backbone",
    "build_mobilenetv3_fpn_backbone",
]

# The MODEL.BACKBONE.NAME values of this module's builders.
BACKBONE_NAMES = ("build_mobilenetv3_backbone", "build_mobilenetv3_fpn_backbone")

# Tables 1 and 2 of the paper, as in torchvision's _mobilenet_v3_conf. One row per inverted
# residual block, features[1], features[2], ...:
# (input channels, kernel, expanded channels, output channels, squeeze-excitation,
#  activation ("RE": ReLU, "HS": hard-swish), stride), all channels before width_mult.
ARCHS = {
    "large": (
        (16, 3, 16, 16, False, "RE", 1),
        (16, 3, 64, 24, False, "RE", 2),
        (24, 3, 72, 24, False, "RE", 1),
        (24, 5, 72, 40, True, "RE", 2),
        (40, 5, 120, 40, True, "RE", 1),
        (40, 5, 120, 40, True, "RE", 1),
        (40, 3, 240, 80, False, "HS", 2),
        (80, 3, 200, 80, False, "HS", 1),
        (80, 3, 184, 80, False, "HS", 1),
        (80, 3, 184, 80, False, "HS", 1),
        (80, 3, 480, 112, True, "HS", 1),
        (112, 3, 672, 112, True, "HS", 1),
        (112, 5, 672, 160, True, "HS", 2),
        (160, 5, 960, 160, True, "HS", 1),
        (160, 5, 960, 160, True, "HS", 1),
    ),
    "small": (
        (16, 3, 16, 16, True, "RE", 2),
        (16, 3, 72, 24, False, "RE", 2),
        (24, 3, 88, 24, False, "RE", 1),
        (24, 5, 96, 40, True, "HS", 2),
        (40, 5, 240, 40, True, "HS", 1),
        (40, 5, 240, 40, True, "HS", 1),
        (40, 5, 120, 48, True, "HS", 1),
        (48, 5, 144, 48, True, "HS", 1),
        (48, 5, 288, 96, True, "HS", 2),
        (96, 5, 576, 96, True, "HS", 1),
        (96, 5, 576, 96, True, "HS", 1),
    ),
}

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
    """The ``norm_layer`` callable for torchvision's blocks: channels -> norm module.

    None when ``norm`` is "": torchvision's blocks then give the convolutions a bias.
    """
    if not norm:
        return None

    def make(channels):
        if norm == "FrozenBN":
            # Built here rather than by get_norm: its identity initialisation,
            # running_var = 1 - eps, depends on eps.
            return FrozenBatchNorm2d(channels, eps=_BN_EPS)
        if norm == "GN":
            return nn.GroupNorm(math.gcd(_GN_GROUPS, channels), channels)
        try:
            layer = get_norm(norm, channels)
        except KeyError:
            raise ValueError(
                f"MODEL.MOBILENETV3.NORM={norm!r} is not a norm of detectron2's get_norm "
                "(e.g. 'FrozenBN', 'BN', 'SyncBN', 'GN', '')"
            ) from None
        if isinstance(layer, nn.modules.batchnorm._BatchNorm):
            layer.eps = _BN_EPS
        return layer

    return make


class MobileNetV3(Backbone):
    """torchvision's MobileNetV3 feature extractor with detectron2's named, strided outputs.

    The arguments mirror the keys of ``cfg.MODEL.MOBILENETV3`` (and ``freeze_at``
    ``MODEL.BACKBONE.FREEZE_AT``), and errors name those keys.
    See the module docstring for the layout and the outputs.
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
                after the last of them are not built.
            freeze_at (int): 0 trains everything, 1 freezes the stem, k >= 2 the stem and
                stage2 ... stage<k> (detectron2's ``MODEL.BACKBONE.FREEZE_AT``); see
                :meth:`freeze`.
            norm (str): a norm of detectron2's ``get_norm``, with torchvision's BatchNorm eps
                and PyTorch's momentum (see ``_BN_EPS``); "GN" uses at most 32 groups (see
                ``_GN_GROUPS``).
        """
        super().__init__()
        if arch not in ARCHS:
            raise ValueError(
                f"MODEL.MOBILENETV3.ARCH={arch!r} is not one of "
                + ", ".join(map(repr, ARCHS))
            )
        if not out_features or not set(out_features) <= set(_OUTPUT_NAMES):
            raise ValueError(
                f"MODEL.MOBILENETV3.OUT_FEATURES={list(out_features)!r} must be a non-empty "
                f"subset of {list(_OUTPUT_NAMES)!r}"
            )
        if not (
            isinstance(freeze_at, int)
            and not isinstance(freeze_at, bool)
            and 0 <= freeze_at <= len(_STAGE_NAMES)
        ):
            raise ValueError(
                f"MODEL.BACKBONE.FREEZE_AT={freeze_at!r} is not an integer in "
                f"0 ... {len(_STAGE_NAMES)}"
            )
        if not (
            isinstance(width_mult, Real) and math.isfinite(width_mult) and width_mult > 0
        ):
            raise ValueError(
                f"MODEL.MOBILENETV3.WIDTH_MULT={width_mult!r} is not a positive number"
            )

        blocks = [
            InvertedResidualConfig(*row, dilation=1, width_mult=width_mult)
            for row in ARCHS[arch]
        ]
        norm_layer = _norm_layer(norm)
        # torchvision's MobileNetV3.features: stem, inverted residual blocks, last 1x1 conv.
        layers = [
            Conv2dNormActivation(
                in_channels,
                blocks[0].input_channels,
                kernel_size=3,
                stride=2,
                norm_layer=norm_layer,
                activation_layer=nn.Hardswish,
            )
        ]
        layers += [InvertedResidual(cnf, norm_layer) for cnf in blocks]
        layers.append(
            Conv2dNormActivation(
                blocks[-1].out_channels,
                6 * blocks[-1].out_channels,
                kernel_size=1,
                norm_layer=norm_layer,
                activation_layer=nn.Hardswish,
            )
        )

        # A stage ends with its last layer at its stride. Large's features[1] runs at stride 2
        # without downsampling (small's downsamples to 4): it opens stage2 in both.
        self._stage_ends = {"stem": 0}
        stride = _STAGE_STRIDES["stem"]
        for index, layer_stride in enumerate([cnf.stride for cnf in blocks] + [1], start=1):
            stride *= layer_stride
            self._stage_ends[_STAGE_AT_STRIDE[max(stride, _STAGE_STRIDES["stage2"])]] = index

        # Like detectron2's ResNet, leave out layers no output needs: unused parameters break
        # DistributedDataParallel.
        self._out_features = [name for name in _OUTPUT_NAMES if name in out_features]
        last = self._stage_ends[self._out_features[-1]]
        self.features = nn.Sequential(*layers[: last + 1])

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


@BACKBONE_REGISTRY.register()
def build_mobilenetv3_backbone(cfg, input_shape: ShapeSpec):
    """
    Returns:
        MobileNetV3: configured by ``cfg.MODEL.MOBILENETV3``.
    """
    mcfg = cfg.MODEL.MOBILENETV3
    return MobileNetV3(
        mcfg.ARCH,
        width_mult=mcfg.WIDTH_MULT,
        in_channels=input_shape.channels,
        out_features=mcfg.OUT_FEATURES,
        freeze_at=cfg.MODEL.BACKBONE.FREEZE_AT,
        norm=mcfg.NORM,
    )


@BACKBONE_REGISTRY.register()
def build_mobilenetv3_fpn_backbone(cfg, input_shape: ShapeSpec):
    """detectron2's ``build_resnet_fpn_backbone`` with a MobileNetV3 bottom-up network.

    Returns:
        FPN: with FPN.IN_FEATURES = stage2 ... stage5, outputs p2 ... p6 (strides 4 ... 64).
    """
    bottom_up = build_mobilenetv3_backbone(cfg, input_shape)
    in_features = cfg.MODEL.FPN.IN_FEATURES
    missing = [f for f in in_features if f not in bottom_up.output_shape()]
    if missing:
        raise ValueError(
            f"MODEL.FPN.IN_FEATURES={list(in_features)!r} asks for {missing}, which "
            f"MODEL.MOBILENETV3.OUT_FEATURES={list(bottom_up.output_shape())!r} does not output"
        )
    out_channels = cfg.MODEL.FPN.OUT_CHANNELS
    backbone = FPN(
        bottom_up=bottom_up,
        in_features=in_features,
        out_channels=out_channels,
        norm=cfg.MODEL.FPN.NORM,
        top_block=LastLevelMaxPool(),
        fuse_type=cfg.MODEL.FPN.FUSE_TYPE,
    )
    return backbone
