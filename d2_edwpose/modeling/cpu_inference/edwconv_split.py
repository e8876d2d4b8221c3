"""EDWConv as e plain depthwise-separable convs, summed.

A grouped conv with ``groups == in_channels`` and ``e > 1`` filters per input channel misses
oneDNN's depthwise kernel and runs several times slower than the same multiply-adds as a plain
depthwise conv (docs/speed.md); split into e plain depthwise convs it takes the fast kernel and
needs no e-times tiled copy of the input. OpenVINO's CPU plugin is built on oneDNN too: the ONNX
and TorchScript exports trace EDWConvs split (``d2_edwpose.export``).
"""

import torch
from torch import nn
from torch.nn import functional as F

from ..layers import EDWConv
from .inference_gate import is_cpu_float32_inference
from .module_replacement import Rewritten, replace_modules

__all__ = ["SplitEDWConv", "split_edwconv", "split_edwconvs"]


class SplitEDWConv(Rewritten, nn.Module):
    """:class:`EDWConv` computed as e plain depthwise convs and e pointwise convs, summed.

    EDWConv's depthwise output channel ``c * e + k`` is input channel ``c`` filtered by its k-th
    filter. The k-th filters of all channels form a plain depthwise conv ``depthwise[k]``, and
    the pointwise conv's input channels ``c * e + k`` a 1x1 conv ``pointwise_weights[k]``; the
    pointwise conv's sum over all its input channels is the sum over k of these 1x1 convs. The
    pointwise conv's bias, ``norm`` and ``activation`` are applied once, after the sum.
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
        # All depthwise convs first, while x is in the caches (8 MB at 20 RoIs of 512 x 14 x 14);
        # their e outputs are alive at once, e - 1 maps more than one at a time.
        filtered = [depthwise(x) for depthwise in self.depthwise]
        out = F.conv2d(filtered[0], self.pointwise_weights[0], self.bias)
        for part, weight in zip(filtered[1:], self.pointwise_weights[1:]):
            if is_cpu_float32_inference(out) and _is_nhwc(out) and _is_nhwc(part):
                # A 1x1 conv of NHWC maps is a matrix product: accumulated into out's memory
                # by the product itself, not added as a new tensor.
                _pixel_rows(out).addmm_(_pixel_rows(part), weight.flatten(1).t())
            else:
                # NCHW maps, or not eager float32 CPU inference (traced by the exports,
                # autograd, autocast, another device or dtype): a plain sum of convs.
                out = out.add_(F.conv2d(part, weight))
        if self.norm is not None:
            out = self.norm(out)
        if self.activation is not None:
            out = self.activation(out)
        return out


def _is_nhwc(x: torch.Tensor) -> bool:
    return x.dim() == 4 and x.is_contiguous(memory_format=torch.channels_last)


def _pixel_rows(x: torch.Tensor) -> torch.Tensor:
    """An NHWC (N, C, H, W) tensor's memory as (N * H * W, C) rows: a view, never a copy."""
    return x.permute(0, 2, 3, 1).view(-1, x.shape[1])


def split_edwconv(module):
    """The :class:`SplitEDWConv` of an EDWConv with e > 1, else None."""
    # DWConv (e = 1) already is a plain depthwise conv.
    if type(module) is EDWConv and module.depthwise.groups < module.depthwise.out_channels:
        return SplitEDWConv(module)
    return None


def split_edwconvs(model: nn.Module) -> int:
    """Split every EDWConv of ``model`` with e > 1; returns how many."""
    return replace_modules(model, split_edwconv)
