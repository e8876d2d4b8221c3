"""Depthwise separable convolutions of the paper (Sec. III-A) and the Xavier init of its heads.

Costs below count one multiply-add as one flop, as fvcore's ``FlopCountAnalysis`` (and so
detectron2's ``detectron2.utils.analysis``) does; biases are not counted. For an output of
h x w, k x k kernels and d_i -> d_j channels:

==========  ================================  ================================
conv        flops                             weights
==========  ================================  ================================
vanilla     h * w * d_i * d_j * k^2           d_i * d_j * k^2
DWConv      h * w * d_i * (k^2 + d_j)         d_i * (k^2 + d_j)
EDWConv     h * w * e * d_i * (k^2 + d_j)     e * d_i * (k^2 + d_j)
==========  ================================  ================================
"""
import math
from functools import partial

from torch import nn

from detectron2.layers import Conv2d

__all__ = [
    "CONV_TYPES",
    "EDWConv",
    "DWConv",
    "conv_class_of_type",
    "is_valid_expand_factor",
    "xavier_fill",
]

# The kinds of k x k conv a head can build (its CONV_TYPE): see conv_class_of_type.
CONV_TYPES = ("vanilla", "dw", "edw")


def is_valid_expand_factor(value) -> bool:
    """Whether ``value`` is a valid EDWConv expand factor: an integer >= 1 (not a bool)."""
    return isinstance(value, int) and not isinstance(value, bool) and value >= 1


class EDWConv(nn.Module):
    """
    Expanded depthwise separable convolution (EDWConv, Sec. III-A.2 and Table II of the paper):
    a k x k depthwise conv applying ``expand_factor`` (e) filters to each of the d_i input
    channels (``depthwise``: d_i -> e * d_i channels, groups = d_i), then a 1x1 pointwise conv
    mixing the channels (``pointwise``: e * d_i -> d_j).

    For an h x w output (i.e. h x w input at stride 1) it costs
    ``h * w * e * d_i * (k^2 + d_j)`` multiply-adds: ``h * w * e * d_i * k^2`` for the depthwise
    conv and ``h * w * e * d_i * d_j`` for the pointwise one. The paper prints the last factor as
    ``(k^2 + d_i)``; the pointwise conv maps e * d_i channels to d_j, so it is ``(k^2 + d_j)``.
    That is ``k^2 * d_j / (e * (k^2 + d_j))`` times cheaper than a vanilla k x k conv.

    There is no normalization or nonlinearity between the two convs, as in Xception (Chollet,
    CVPR 2017, Sec. 4.7): there it made separable convs converge faster and end better than
    ReLU (or ELU) in between, plausibly because a depthwise filter sees a single channel, too
    thin a feature space for a nonlinearity not to lose information. The composition is thus
    linear, which also makes a depthwise bias redundant (the pointwise conv maps it to a
    constant, which its own bias already is): ``depthwise`` has none and ``bias`` is the
    pointwise conv's. ``norm`` and ``activation`` are those of ``pointwise`` (a detectron2
    :class:`Conv2d`), so they run after it, in that order: ``DWConv(..., activation=F.relu)``
    is a drop-in replacement for ``Conv2d(..., activation=F.relu)``, empty inputs included.
    """

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        kernel_size,
        stride=1,
        padding=0,
        dilation=1,
        *,
        expand_factor: int,
        bias: bool = True,
        norm=None,
        activation=None,
    ):
        """
        Args:
            in_channels, out_channels: d_i and d_j.
            kernel_size, stride, padding, dilation: of the depthwise conv, as in
                :class:`torch.nn.Conv2d`; the pointwise conv is 1x1 with stride 1.
            expand_factor (int >= 1): e, the depthwise filters per input channel; 1 is
                :class:`DWConv`. The project's default, ``MODEL.ROI_KEYPOINT_HEAD.EXPAND_FACTOR
                = 2``, is the smallest e that expands anything. The paper does not state its
                e, but its EDWConv head cost 0.3 ms over its DWConv head (25.2 -> 25.0 FPS)
                where the DWConv head saved 44 ms over the vanilla one (11.9 -> 25.2 FPS).
                With the stock 8 x 512 head, 8.8x the flops of DWConv's, time following
                flops would give e ~ 1.06: its GPU time clearly does not follow flops, and
                all the figure says is that e is small. On a CPU, where time does follow
                flops, each unit of e costs a DWConv head's flops again (e = 2: still ~4.4x
                fewer than vanilla).
            bias (bool): whether the pointwise conv has a bias (see above).
            norm (nn.Module or None): normalization applied to the pointwise conv's output,
                e.g. built by :func:`detectron2.layers.get_norm` for ``out_channels``.
            activation (callable(Tensor) -> Tensor or None): applied after ``norm``.
        """
        super().__init__()
        if not is_valid_expand_factor(expand_factor):
            raise ValueError(f"expand_factor must be an integer >= 1, got {expand_factor!r}")
        expanded_channels = expand_factor * in_channels
        self.depthwise = Conv2d(
            in_channels,
            expanded_channels,
            kernel_size,
            stride=stride,
            padding=padding,
            dilation=dilation,
            groups=in_channels,
            bias=False,
        )
        self.pointwise = Conv2d(
            expanded_channels, out_channels, 1, bias=bias, norm=norm, activation=activation
        )

    def forward(self, x):
        return self.pointwise(self.depthwise(x))


class DWConv(EDWConv):
    """
    Depthwise separable convolution (DWConv, Sec. III-A.1 and Table I of the paper): a k x k
    depthwise conv with one filter per input channel (``depthwise``: d_i -> d_i channels,
    groups = d_i), then a 1x1 pointwise conv (``pointwise``: d_i -> d_j). It is
    :class:`EDWConv` with ``expand_factor=1``; see there for ``norm``, ``activation``, ``bias``.

    For an h x w output it costs ``h * w * d_i * (k^2 + d_j)`` multiply-adds:
    ``h * w * d_i * k^2`` for the depthwise conv and ``h * w * d_i * d_j`` for the pointwise one,
    ``k^2 * d_j / (k^2 + d_j)`` times cheaper than a vanilla k x k conv.
    """

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        kernel_size,
        stride=1,
        padding=0,
        dilation=1,
        *,
        bias: bool = True,
        norm=None,
        activation=None,
    ):
        super().__init__(
            in_channels,
            out_channels,
            kernel_size,
            stride=stride,
            padding=padding,
            dilation=dilation,
            expand_factor=1,
            bias=bias,
            norm=norm,
            activation=activation,
        )


def xavier_fill(module: nn.Module) -> None:
    """
    Initialize a (possibly grouped or transposed) conv's weight by Xavier's (Glorot & Bengio,
    AISTATS 2010) uniform initializer, U(-a, a) with a = sqrt(6 / (fan_in + fan_out)), and its
    bias to 0.

    :func:`torch.nn.init.xavier_uniform_` takes the fans from the weight's shape, which for a
    grouped conv counts every group's outputs as fan-out: d_i times too many for a depthwise
    conv, whose weights would come out ~sqrt(d_i / 2) times too small (16x for d_i = 512), and a
    stack of them would all but zero the signal. Here the fans are per group: each output sums
    (in_channels / groups) * k^2 inputs and each input feeds (out_channels / groups) * k^2
    outputs (for a transposed conv the two are swapped, which leaves their sum unchanged).

    This is Glorot's initializer, not detectron2/fvcore's ``c2_xavier_fill`` (Caffe2's
    "XavierFill", which scales by fan-in only and is in fact a He-style init).
    """
    receptive_field = math.prod(module.kernel_size)
    fan_in = module.in_channels // module.groups * receptive_field
    fan_out = module.out_channels // module.groups * receptive_field
    bound = math.sqrt(6.0 / (fan_in + fan_out))
    nn.init.uniform_(module.weight, -bound, bound)
    if module.bias is not None:
        nn.init.zeros_(module.bias)


def conv_class_of_type(conv_type, expand_factor):
    """
    The class of a head's k x k convs for its ``conv_type`` (one of :data:`CONV_TYPES`):
    detectron2's :class:`Conv2d` ("vanilla"), :class:`DWConv` ("dw") or :class:`EDWConv` with
    ``expand_factor`` ("edw"), all taking ``Conv2d``'s arguments.
    """
    if conv_type == "edw":
        return partial(EDWConv, expand_factor=expand_factor)
    return {"vanilla": Conv2d, "dw": DWConv}[conv_type]
