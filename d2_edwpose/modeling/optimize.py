"""Inference-time rewrites of a built model that keep what it computes and make it faster on CPU.

:func:`optimize_for_inference` applies, in place, to any detectron2 model (ours or stock):

* **norm folding**: a frozen or eval-mode BatchNorm after a convolution is an affine map per
  channel, folded into the convolution's weight and bias (detectron2 :class:`Conv2d` with a
  ``norm``, and ``conv, norm`` pairs in ``nn.Sequential`` such as torchvision's
  ``Conv2dNormActivation`` in the MobileNetV3 blocks). It saves one pass over every feature map.
* **EDWConv as e depthwise-separable convs, summed** (CPU): a grouped conv with
  ``groups == in_channels`` and ``e > 1`` filters per input channel misses oneDNN's depthwise
  kernel and runs ~9x slower than the same number of multiply-adds as a plain depthwise conv
  (one thread, 20 RoIs of 512 x 14 x 14, e = 2: 38 ms against 4 ms); see
  :class:`_SplitEDWConv`.
* **channels-last memory format** (CPU): oneDNN's depthwise and 1x1 convolutions run faster
  on NHWC tensors, and the layout then propagates from conv to conv.
* **RoIAlign as one gather over channels-last features** (CPU): detectron2's ``ROIPooler``
  becomes :class:`~d2_edwpose.modeling.roi_pooling.ChannelsLastROIPooler`, and box heads that
  flatten its output straight into a linear layer flatten it in memory order, with the
  layer's input features permuted to match (:func:`_flatten_box_features_channels_last`).
* **Winograd convolutions** (CPU, where PyTorch has NNPACK): 3x3 stride-1 convs on large
  maps (the FPN's and RPN's on the stride-4 and stride-8 levels) run NNPACK's Winograd
  algorithm (:class:`_WinogradConv2d`).

Each rewrite gives the same result up to float rounding (folding reorders a product, Winograd
transforms the tiles); ``tests/test_optimize.py`` checks equal detections with boxes and
keypoints within 0.01 px.
"""
import logging

import torch
from torch import nn
from torch.nn import functional as F
from torch.nn.utils.fusion import fuse_conv_bn_weights

from detectron2.layers import Conv2d, FrozenBatchNorm2d

from ..layers import EDWConv
from .roi_pooling import ChannelsLastROIPooler

__all__ = ["optimize_for_inference", "fold_conv_norms"]

logger = logging.getLogger(__name__)

# Convolutions whose forward is the plain convolution (then detectron2's norm and activation);
# subclasses may compute something else (e.g. weight standardisation) and are left alone.
_PLAIN_CONVS = (nn.Conv2d, Conv2d)


def _is_foldable_norm(module) -> bool:
    if isinstance(module, FrozenBatchNorm2d):
        return True
    # Without running statistics an eval-mode BatchNorm still normalises by batch statistics.
    return (
        isinstance(module, nn.modules.batchnorm._BatchNorm)
        and not module.training
        and module.track_running_stats
    )


def _fold_into(conv: nn.Conv2d, norm) -> None:
    weight, bias = fuse_conv_bn_weights(
        conv.weight,
        conv.bias,
        norm.running_mean,
        norm.running_var,
        norm.eps,
        norm.weight,
        norm.bias,
    )
    conv.weight, conv.bias = weight, bias


@torch.no_grad()
def fold_conv_norms(model: nn.Module) -> int:
    """Fold every frozen/eval BatchNorm that directly follows a conv into it; returns how many."""
    folded = 0
    for module in list(model.modules()):
        norm = getattr(module, "norm", None)
        if type(module) in _PLAIN_CONVS and norm is not None and _is_foldable_norm(norm):
            # detectron2's Conv2d: conv -> norm -> activation.
            _fold_into(module, norm)
            module.norm = None
            folded += 1
        elif isinstance(module, nn.Sequential):
            children = list(module.named_children())
            for (_, first), (name, second) in zip(children, children[1:]):
                if (
                    type(first) in _PLAIN_CONVS
                    and getattr(first, "norm", None) is None
                    and getattr(first, "activation", None) is None
                    and _is_foldable_norm(second)
                ):
                    _fold_into(first, second)
                    setattr(module, name, nn.Identity())
                    folded += 1
    return folded


class _SplitEDWConv(nn.Module):
    """:class:`EDWConv` computed as e plain depthwise convs and e pointwise convs, summed.

    EDWConv's depthwise output channel ``c * e + k`` is input channel ``c`` filtered by its k-th
    filter. The k-th filters of all channels form a plain depthwise conv ``depthwise[k]``, and
    the pointwise conv's input channels ``c * e + k`` a 1x1 conv ``pointwise_weights[k]``; the
    pointwise conv's sum over all its input channels is the sum over k of these 1x1 convs. This
    needs no e-times tiled copy of the input and no depthwise conv with a channel multiplier,
    neither of which oneDNN runs fast. The pointwise conv's bias, ``norm`` and ``activation``
    are applied once, after the sum.
    """

    def __init__(self, edw: EDWConv):
        super().__init__()
        depthwise, pointwise = edw.depthwise, edw.pointwise
        in_channels = depthwise.in_channels
        expand_factor = depthwise.out_channels // in_channels
        self.depthwise = nn.ModuleList()
        for k in range(expand_factor):
            conv = nn.Conv2d(
                in_channels,
                in_channels,
                depthwise.kernel_size,
                stride=depthwise.stride,
                padding=depthwise.padding,
                dilation=depthwise.dilation,
                groups=in_channels,
                bias=False,
            ).to(depthwise.weight)
            with torch.no_grad():
                conv.weight.copy_(depthwise.weight[k::expand_factor])
            self.depthwise.append(conv)
        self.pointwise_weights = nn.ParameterList(
            nn.Parameter(pointwise.weight[:, k::expand_factor].detach().clone())
            for k in range(expand_factor)
        )
        self.bias = pointwise.bias
        self.norm, self.activation = pointwise.norm, pointwise.activation

    def forward(self, x):
        out = F.conv2d(self.depthwise[0](x), self.pointwise_weights[0], self.bias)
        for depthwise, weight in zip(self.depthwise[1:], self.pointwise_weights[1:]):
            out = out.add_(F.conv2d(depthwise(x), weight))
        if self.norm is not None:
            out = self.norm(out)
        if self.activation is not None:
            out = self.activation(out)
        return out


def _replace_modules(model: nn.Module, replacement) -> int:
    """Replace every submodule ``m`` for which ``replacement(m)`` is not None by it; returns
    how many were replaced. Plain lists of submodules that a forward iterates over (detectron2's
    FPN keeps its ``lateral_convs`` and ``output_convs`` so) are updated too."""
    replaced = 0
    for parent in list(model.modules()):
        if isinstance(parent, _REWRITTEN):
            continue  # already rewritten, e.g. by an earlier optimize_for_inference
        for name, child in list(parent.named_children()):
            new = replacement(child)
            if new is None:
                continue
            setattr(parent, name, new)
            for attribute in vars(parent).values():
                if isinstance(attribute, list):
                    attribute[:] = [new if item is child else item for item in attribute]
            replaced += 1
    return replaced


def _split_edwconv(module):
    # DWConv (e = 1) already is a plain depthwise conv.
    if type(module) is EDWConv and module.depthwise.groups < module.depthwise.out_channels:
        return _SplitEDWConv(module)
    return None


class _WinogradConv2d(nn.Module):
    """A 3x3, stride-1 convolution computed on large CPU inputs by NNPACK's Winograd algorithm
    (F(6x6, 3x3), shipped with PyTorch), which needs ~5x fewer multiply-adds than oneDNN's
    direct convolution: 256 -> 256 channels on 80x80 took 18 ms instead of 41 ms (2 cores).
    On input maps under ``min_pixels`` pixels its tile transforms cost more than they save and
    the wrapped conv runs as it is. Its results differ from the direct convolution's by float
    rounding (relative 1e-5 on those maps). Its output is NCHW (NNPACK's layout); the ops after
    it convert as they need."""

    min_pixels = 40 * 40

    def __init__(self, conv: nn.Conv2d):
        super().__init__()
        self.conv = conv
        # NNPACK reads NCHW weights; oneDNN (the small maps) reorders weights of any layout.
        conv.weight = nn.Parameter(conv.weight.detach().contiguous())

    def forward(self, x):
        conv = self.conv
        if (
            x.device.type != "cpu"
            or x.dtype != torch.float32
            or x.shape[-2] * x.shape[-1] < self.min_pixels
            or x.shape[0] == 0
            or torch.is_grad_enabled()
            or torch.jit.is_tracing()
            # Also initialises NNPACK, e.g. in a process that unpickled this module.
            or not torch.backends.nnpack.is_available()
        ):
            return conv(x)
        out = torch._nnpack_spatial_convolution(
            x.contiguous(), conv.weight.contiguous(), conv.bias, conv.padding
        )
        if getattr(conv, "norm", None) is not None:
            out = conv.norm(out)
        if getattr(conv, "activation", None) is not None:
            out = conv.activation(out)
        return out


def _winograd_conv(module):
    if (
        type(module) in _PLAIN_CONVS
        and module.kernel_size == (3, 3)
        and module.stride == (1, 1)
        and module.dilation == (1, 1)
        and module.groups == 1
        and module.padding_mode == "zeros"
        and isinstance(module.padding, tuple)
    ):
        return _WinogradConv2d(module)
    return None


def _channels_last_pooler(module):
    if ChannelsLastROIPooler.supports(module):
        return ChannelsLastROIPooler.from_pooler(module)
    return None


class _ChannelsLastFlattenLinear(nn.Module):
    """``nn.Flatten()`` then ``linear`` for (N, C, H, W) inputs, flattening in (H, W, C) order:
    a view of channels-last memory, where flattening in (C, H, W) order copies (50 MB for the
    paper configs' 1,000 RoIs). The linear layer's input features are permuted to match; they
    are this module's ``weight``, a new state-dict key, so that an optimized model's weights
    cannot be loaded into a model as built by mistake."""

    def __init__(self, linear: nn.Linear, channels: int, height: int, width: int):
        super().__init__()
        weight = linear.weight.detach().view(-1, channels, height, width).permute(0, 2, 3, 1)
        self.weight = nn.Parameter(weight.reshape(linear.weight.shape).contiguous())
        self.bias = linear.bias

    def forward(self, x):
        return F.linear(x.permute(0, 2, 3, 1).flatten(1), self.weight, self.bias)


@torch.no_grad()
def _flatten_box_features_channels_last(model: nn.Module) -> int:
    """Flatten the channels-last RoI features of box heads that begin with ``flatten`` and a
    linear layer (detectron2's ``FastRCNNConvFCHead`` without convs) without copying them;
    returns how many heads were changed. The heads are found as detectron2's ROI heads name
    them, ``box_pooler`` feeding ``box_head``."""
    changed = 0
    for module in model.modules():
        pooler, head = getattr(module, "box_pooler", None), getattr(module, "box_head", None)
        if not isinstance(pooler, ChannelsLastROIPooler) or not isinstance(head, nn.Sequential):
            continue
        children = list(head.named_children())
        if len(children) < 2:
            continue
        (flatten_name, flatten), (linear_name, linear) = children[:2]
        if not (
            type(flatten) is nn.Flatten
            and (flatten.start_dim, flatten.end_dim) == (1, -1)
            and type(linear) is nn.Linear
        ):
            continue
        height, width = pooler.output_size
        channels = linear.in_features // (height * width)
        setattr(head, flatten_name, _ChannelsLastFlattenLinear(linear, channels, height, width))
        setattr(head, linear_name, nn.Identity())
        changed += 1
    return changed


# Modules made by the rewrites: their children are not rewritten again.
_REWRITTEN = (_SplitEDWConv, _WinogradConv2d, ChannelsLastROIPooler, _ChannelsLastFlattenLinear)


def optimize_for_inference(model: nn.Module, device=None) -> nn.Module:
    """
    Apply the rewrites of this module to ``model`` in place and return it.

    Args:
        model: a built detectron2 model (e.g. ``build_model(cfg)`` with its weights loaded) in
            eval mode. It can no longer be trained afterwards (norms are gone), and its state
            dict is not the model's: save and load models as built.
        device: where it will run; default: the device of its parameters. The CPU-only
            rewrites are skipped elsewhere.
    """
    if model.training:
        raise ValueError(
            "optimize_for_inference folds BatchNorms with their running statistics, which is "
            "only valid for inference: call model.eval() first"
        )
    if device is None:
        device = next(model.parameters(), torch.empty(0)).device
    device = torch.device(device)
    counts = {"folded norms": fold_conv_norms(model)}
    if device.type == "cpu":
        counts["EDWConvs"] = _replace_modules(model, _split_edwconv)
        counts["channels-last RoI poolers"] = _replace_modules(model, _channels_last_pooler)
        counts["channels-last box-feature flattens"] = _flatten_box_features_channels_last(model)
        model.to(memory_format=torch.channels_last)
        if torch.backends.nnpack.is_available():
            counts["Winograd convs"] = _replace_modules(model, _winograd_conv)
    logger.info(
        "optimize_for_inference (%s): %s",
        device,
        ", ".join(f"{count} {what}" for what, count in counts.items()),
    )
    return model
