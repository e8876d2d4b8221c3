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

from ..utils.validation import is_int

__all__ = [
    "CONV_TYPES",
    "EDWConv",
    "DWConv",
    "conv_class_of_type",
    "is_valid_expand_factor",
    "xavier_fill",
    "xavier_fill_convs",
]

# The kinds of k x k conv a head can build (its CONV_TYPE): see conv_class_of_type.
CONV_TYPES = ("vanilla", "dw", "edw")


def is_valid_expand_factor(value) -> bool:
    """Whether ``value`` is a valid EDWConv expand factor: an integer >= 1 (not a bool)."""
    return is_int(value) and value >= 1


class EDWConv(nn.Module):
    """
    Expanded depthwise separable convolution (EDWConv, Sec. III-A.2 and Table II of the paper):
    a k x k depthwise conv applying ``expand_factor`` (e) filters to each of the d_i input
    channels (``depthwise``: d_i -> e * d_i channels, groups = d_i), then a 1x1 pointwise conv
    mixing the channels (``pointwise``: e * d_i -> d_j).

    It costs ``h * w * e * d_i * (k^2 + d_j)`` multiply-adds for an h x w output, ``k^2 * d_j /
    (e * (k^2 + d_j))`` times a vanilla conv's. (The paper prints ``(k^2 + d_i)``: the pointwise
    conv maps e * d_i channels to d_j.)

    Nothing runs between the two convs, as in Xception (Chollet, CVPR 2017, Sec. 4.7), where a
    nonlinearity there made separable convs train worse. The composition is thus linear, so a
    depthwise bias would be redundant with the pointwise one: ``depthwise`` has none. ``bias``,
    ``norm`` and ``activation`` are those of ``pointwise`` (a detectron2 :class:`Conv2d`), which
    makes ``DWConv(..., activation=F.relu)`` a drop-in replacement for ``Conv2d(...,
    activation=F.relu)``, empty inputs included.
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
                :class:`DWConv`.
            bias (bool): whether the pointwise conv has a bias.
            norm (nn.Module or None): normalization of the pointwise conv's output, e.g.
                built by :func:`detectron2.layers.get_norm` for ``out_channels``.
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
    depthwise conv with one filter per input channel, then a 1x1 pointwise conv, i.e.
    :class:`EDWConv` with ``expand_factor=1`` and its other arguments. It costs
    ``h * w * d_i * (k^2 + d_j)`` multiply-adds for an h x w output.
    """

    def __init__(self, *args, **kwargs):
        super().__init__(*args, expand_factor=1, **kwargs)


def xavier_fill(module: nn.Module) -> None:
    """
    Initialize a (possibly grouped or transposed) conv's weight by Xavier's (Glorot & Bengio,
    AISTATS 2010) uniform initializer, U(-a, a) with a = sqrt(6 / (fan_in + fan_out)), and its
    bias to 0.

    The fans are per group: :func:`torch.nn.init.xavier_uniform_` takes them from the weight's
    shape, which for a depthwise conv counts d_i times too large a fan-out (weights ~sqrt(d_i /
    2) times too small, which a stack of them compounds until the signal all but vanishes).
    This is Glorot's initializer, not detectron2/fvcore's ``c2_xavier_fill`` (Caffe2's
    "XavierFill", which scales by fan-in only).
    """
    receptive_field = math.prod(module.kernel_size)
    # Each output sums (in_channels / groups) * k^2 inputs and each input feeds
    # (out_channels / groups) * k^2 outputs; a transposed conv swaps the two, not their sum.
    fan_in = module.in_channels // module.groups * receptive_field
    fan_out = module.out_channels // module.groups * receptive_field
    bound = math.sqrt(6.0 / (fan_in + fan_out))
    nn.init.uniform_(module.weight, -bound, bound)
    if module.bias is not None:
        nn.init.zeros_(module.bias)


def xavier_fill_convs(module: nn.Module) -> None:
    """:func:`xavier_fill` every conv and transposed conv of ``module``."""
    for submodule in module.modules():
        if isinstance(submodule, (nn.Conv2d, nn.ConvTranspose2d)):
            xavier_fill(submodule)


def conv_class_of_type(conv_type, expand_factor):
    """
    The class of a head's k x k convs for its ``conv_type`` (one of :data:`CONV_TYPES`):
    detectron2's :class:`Conv2d` ("vanilla"), :class:`DWConv` ("dw") or :class:`EDWConv` with
    ``expand_factor`` ("edw"), all taking ``Conv2d``'s arguments.
    """
    if conv_type not in CONV_TYPES:
        raise ValueError(f"conv_type={conv_type!r}: expected one of {CONV_TYPES}")
    if conv_type == "edw":
        return partial(EDWConv, expand_factor=expand_factor)
    return {"vanilla": Conv2d, "dw": DWConv}[conv_type]
