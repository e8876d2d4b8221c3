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
* **Winograd convolutions** (CPU): wide 3x3 stride-1 convs (the FPN's and RPN's, the vanilla
  keypoint head's) run the Winograd algorithm F(4x4, 3x3) on channels-last maps, 4x fewer
  multiply-adds (:class:`_WinogradConv2d`). The RPN head's conv, shared by all levels, runs
  on all of them at once (:class:`_LevelBatchedRPNHead`).
* **RPN proposals selected best first** (CPU): NMS runs on the best-scoring candidates first,
  on more only when too few survive (:class:`~d2_edwpose.modeling.rpn_proposals.BestFirstRPN`).
* **transposed convs as a matrix product** (CPU): the keypoint heads' heatmap predictor runs
  as one matrix product and a col2im sum (:class:`_GemmConvTranspose2d`).
* **in-place ReLUs** after the convs of ``nn.Sequential`` heads (:func:`_relus_in_place`).

Each rewrite gives the same result up to float rounding (folding reorders a product, Winograd
transforms the tiles, NMS on fewer boxes may shift them by level); ``tests/test_optimize.py``
checks equal detections with boxes and keypoints within 0.01 px.
"""
import logging

import torch
from torch import nn
from torch.nn import functional as F
from torch.nn.utils.fusion import fuse_conv_bn_weights

from detectron2.layers import Conv2d, FrozenBatchNorm2d
from detectron2.modeling.proposal_generator.rpn import RPN, StandardRPNHead
from detectron2.modeling.roi_heads.keypoint_head import KRCNNConvDeconvUpsampleHead

from ..layers import DWConv, EDWConv
from .roi_heads.keypoint_head import KRCNNSeparableConvDeconvUpsampleHead
from .roi_pooling import ChannelsLastROIPooler, is_cpu_float32_inference
from .rpn_proposals import BestFirstRPN

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
        # All depthwise convs first, while x is in the caches (8 MB at 20 RoIs of 512 x 14 x 14);
        # their e outputs are alive at once, e - 1 maps more than one at a time.
        filtered = [depthwise(x) for depthwise in self.depthwise]
        out = F.conv2d(filtered[0], self.pointwise_weights[0], self.bias)
        for part, weight in zip(filtered[1:], self.pointwise_weights[1:]):
            if _is_nhwc(out) and _is_nhwc(part):
                # A 1x1 conv of NHWC maps is a matrix product: accumulated into out's memory
                # by the product itself, not added as a new tensor.
                _pixel_rows(out).addmm_(_pixel_rows(part), weight.flatten(1).t())
            else:
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


# Winograd F(4x4, 3x3) (Lavin & Gray, "Fast Algorithms for Convolutional Neural Networks",
# 2016): B^T transforms 6x6 input tiles, G 3x3 filters, A^T maps products back to 4x4 outputs.
_WINOGRAD_INPUT = torch.tensor(
    [
        [4, 0, -5, 0, 1, 0],
        [0, -4, -4, 1, 1, 0],
        [0, 4, -4, -1, 1, 0],
        [0, -2, -1, 2, 1, 0],
        [0, 2, -1, -2, 1, 0],
        [0, 4, 0, -5, 0, 1],
    ],
    dtype=torch.float64,
)
_WINOGRAD_FILTER = torch.tensor(
    [
        [1 / 4, 0, 0],
        [-1 / 6, -1 / 6, -1 / 6],
        [-1 / 6, 1 / 6, -1 / 6],
        [1 / 24, 1 / 12, 1 / 6],
        [1 / 24, -1 / 12, 1 / 6],
        [0, 0, 1],
    ],
    dtype=torch.float64,
)
_WINOGRAD_OUTPUT = torch.tensor(
    [[1, 1, 1, 1, 1, 0], [0, 1, -1, 2, -2, 0], [0, 1, 1, 4, 4, 0], [0, 1, -1, 8, -8, 1]],
    dtype=torch.float64,
)
_TILE, _TILE_OUT = 6, 4
# 4x4 output tiles computed at once; see winograd_conv3x3.
_MAX_TILES = 1024


def winograd_conv3x3(x, transformed_weight, bias, padding, max_tiles=_MAX_TILES):
    """A 3x3, stride-1, dilation-1 convolution of ``x`` (N, C, H, W) by Winograd F(4x4, 3x3).

    Args:
        transformed_weight: (36, C, K) from :func:`winograd_transform_weight`.
        bias: (K,) or None.
        padding: (pad_h, pad_w) zero padding.
        max_tiles: 4x4 output tiles computed at once (whole images, or bands of tile rows
            of one image). The intermediates are 36 x tiles x C values; beyond ~1,000 tiles
            they leave the caches (1,000 RoIs of 256 x 7 x 7 at once: 413 ms; in chunks: below
            oneDNN's 269 ms).
    Returns:
        (N, K, H_out, W_out), channels-last.

    The input is padded (NHWC) and transformed along rows, B^T d, on each band of 6 rows
    (stride 4) as a whole; the bands are then cut into overlapping 6x6 tiles and transformed
    along columns, d B, into (36, tiles, C): each tile position's values over all tiles form a
    (tiles, C) matrix. The 36 positions are one batched (tiles, C) x (C, K) product, 2.25
    multiply-adds per output pixel and channel pair instead of 9, and A^T m A maps them back.
    The row transform runs on the bands (1.5 times the input) rather than on the cut tiles
    (2.25 times).
    """
    padded, out = _padded_input_and_output(x, padding, transformed_weight.shape[2])
    n, out_h, out_w = out.shape[:3]
    tiles_h, tiles_w = -(-out_h // _TILE_OUT), -(-out_w // _TILE_OUT)
    transforms = _WINOGRAD_INPUT.to(x), _WINOGRAD_OUTPUT.to(x)
    if tiles_h * tiles_w <= max_tiles:
        images = max_tiles // (tiles_h * tiles_w)
        for start in range(0, n, images):
            chunk = slice(start, start + images)
            _winograd_tiles([(padded[chunk], out[chunk])], transformed_weight, bias, transforms)
    else:
        tile_rows = max(1, max_tiles // tiles_w)
        for image in range(n):
            for first in range(0, tiles_h, tile_rows):
                last = min(first + tile_rows, tiles_h)
                band = (
                    padded[image : image + 1, _TILE_OUT * first : _TILE_OUT * last + 2],
                    out[image : image + 1, _TILE_OUT * first : _TILE_OUT * last],
                )
                _winograd_tiles([band], transformed_weight, bias, transforms)
    return out.permute(0, 3, 1, 2)


def winograd_conv3x3_maps(xs, transformed_weight, bias, padding, max_tiles=_MAX_TILES):
    """:func:`winograd_conv3x3` of each map of ``xs`` (e.g. the levels of a feature pyramid, of
    any sizes), with one batched product for the tiles of several of them: one (tiles, C) x
    (C, K) product per tile position instead of one per map, which runs the small maps' few
    tiles at the large ones' speed. Consecutive maps are batched up to ``max_tiles`` tiles
    (:func:`_tile_groups`); a larger map runs alone, in chunks. Returns the outputs in order,
    channels-last."""
    counts = [_num_output_tiles(x.shape, padding) for x in xs]
    transforms = _WINOGRAD_INPUT.to(xs[0]), _WINOGRAD_OUTPUT.to(xs[0])
    outs = []
    for group in _tile_groups(counts, max_tiles):
        if len(group) == 1 and counts[group[0]] > max_tiles:
            outs.append(winograd_conv3x3(xs[group[0]], transformed_weight, bias, padding, max_tiles))
            continue
        pieces = [
            _padded_input_and_output(xs[i], padding, transformed_weight.shape[2]) for i in group
        ]
        _winograd_tiles(pieces, transformed_weight, bias, transforms)
        outs.extend(out.permute(0, 3, 1, 2) for _, out in pieces)
    return outs


def _tile_groups(counts, max_tiles):
    """Indices of maps of ``counts`` output tiles, in runs of consecutive maps of at most
    ``max_tiles`` tiles in all; a map of more is a run of its own."""
    groups, total = [], 0
    for index, count in enumerate(counts):
        if not groups or total + count > max_tiles:
            groups.append([])
            total = 0
        groups[-1].append(index)
        total += count
    return groups


def _padded_input_and_output(x, padding, out_channels):
    """``x`` (N, C, H, W) zero-padded in NHWC to whole 4x4 output tiles (plus the 3x3 kernel's
    border), and an empty NHWC output (N, H_out, W_out, K) for it."""
    n, _, height, width = x.shape
    pad_h, pad_w = padding
    out_h, out_w = height + 2 * pad_h - 2, width + 2 * pad_w - 2
    padded_h = _TILE_OUT * -(-out_h // _TILE_OUT) + 2
    padded_w = _TILE_OUT * -(-out_w // _TILE_OUT) + 2
    # contiguous(): with nothing to pad, F.pad returns a clone in the input's layout.
    padded = F.pad(
        x.permute(0, 2, 3, 1),
        (0, 0, pad_w, padded_w - width - pad_w, pad_h, padded_h - height - pad_h),
    ).contiguous()
    return padded, x.new_empty((n, out_h, out_w, out_channels))


def _winograd_tiles(pieces, transformed_weight, bias, transforms):
    """For each ``(padded, out)`` of ``pieces``, fill ``out`` (n, <= 4 * tile rows, <= 4 * tile
    columns, K) from ``padded`` (n, 4 * tile rows + 2, 4 * tile columns + 2, C), both NHWC
    slices of contiguous tensors, with one batched product for the tiles of all pieces;
    ``transforms`` are B^T and A^T in the input's dtype."""
    input_transform, output_transform = transforms
    channels, out_channels = transformed_weight.shape[1:]
    shapes = [
        (len(padded), (padded.shape[1] - 2) // _TILE_OUT, (padded.shape[2] - 2) // _TILE_OUT)
        for padded, _ in pieces
    ]
    counts = [n * tiles_h * tiles_w for n, tiles_h, tiles_w in shapes]
    # (transformed row, tile column, tile, channel)
    tiles = pieces[0][0].new_empty((_TILE, _TILE, sum(counts), channels))
    for (padded, _), (n, tiles_h, tiles_w), part in zip(pieces, shapes, tiles.split(counts, 2)):
        row, image = padded.stride(1), padded.stride(0)
        bands = padded.as_strided((n, tiles_h, _TILE, row), (image, _TILE_OUT * row, row, 1))
        # (n, tile y, transformed row, pixels of the band)
        rows_transformed = torch.matmul(input_transform, bands)
        part.view(_TILE, _TILE, n, tiles_h, tiles_w, channels).copy_(
            rows_transformed.as_strided(
                (_TILE, _TILE, n, tiles_h, tiles_w, channels),
                (row, channels, tiles_h * _TILE * row, _TILE * row, _TILE_OUT * channels, 1),
            )
        )
    transformed = torch.matmul(input_transform, tiles.view(_TILE, _TILE, -1))
    products = torch.bmm(transformed.view(_TILE * _TILE, -1, channels), transformed_weight)
    out_tiles = torch.matmul(
        output_transform,
        torch.mm(output_transform, products.view(_TILE, -1)).view(_TILE_OUT, _TILE, -1),
    ).view(_TILE_OUT, _TILE_OUT, -1, out_channels)
    for (_, out), (n, tiles_h, tiles_w), part in zip(pieces, shapes, out_tiles.split(counts, 2)):
        out_h, out_w = out.shape[1:3]
        part = (
            part.view(_TILE_OUT, _TILE_OUT, n, tiles_h, tiles_w, out_channels)
            .permute(2, 3, 0, 4, 1, 5)
            .reshape(n, _TILE_OUT * tiles_h, _TILE_OUT * tiles_w, out_channels)[:, :out_h, :out_w]
        )
        if bias is None:
            out.copy_(part)
        else:
            torch.add(part, bias, out=out)


def _num_output_tiles(input_shape, padding):
    n, _, height, width = input_shape
    out_h, out_w = height + 2 * padding[0] - 2, width + 2 * padding[1] - 2
    return n * -(-out_h // _TILE_OUT) * -(-out_w // _TILE_OUT)


def winograd_transform_weight(weight):
    """(K, C, 3, 3) filters -> (36, C, K): G g G^T per filter, computed in float64."""
    out_channels, in_channels = weight.shape[:2]
    transform = _WINOGRAD_FILTER.to(weight.device)
    transformed = torch.einsum("ia,kcab,jb->ijck", transform, weight.double(), transform)
    transformed = transformed.reshape(_TILE * _TILE, in_channels, out_channels)
    return transformed.to(weight.dtype).contiguous()


class _WinogradConv2d(nn.Module):
    """A 3x3, stride-1 convolution run by :func:`winograd_conv3x3` for CPU inference
    (:func:`~.roi_pooling.is_cpu_float32_inference`) on inputs of at least ``min_tiles`` 4x4
    output tiles; with fewer the (tiles, C) matrix products are too small to run fast and the
    wrapped conv runs as it is. Only convs with at least ``min_channels`` input and output
    channels are wrapped: with fewer the tile transforms, which cost per value, not per
    multiply-add, outweigh the saving. Measured on 2 cores (channels-last, oneDNN's direct conv
    in brackets): 256 -> 256 channels on 80x80 17.1 ms (38.9), on 20x20 1.5 (2.7); 512 -> 512
    on 20 RoIs of 14x14 45 ms (93); 128 -> 128 on 40x40 1.8 (2.5); but 512 -> 512 on 10x10
    (9 tiles) 3.0 (2.5), 64 -> 64 on 80x80 2.7 (2.5). Results differ from the direct
    convolution's by float rounding (relative ~5e-5 at 512 input channels).

    The transformed filters (4x the conv's weight: 36 values per filter instead of 9) are
    cached, recomputed when the conv's weight is replaced or changed in place (its version
    counter: ``load_state_dict``, optimizer steps; not writes through ``weight.data``), and not
    pickled or deep-copied: the conv's weight stays the one truth.
    """

    min_tiles = 16
    min_channels = 128

    def __init__(self, conv: nn.Conv2d):
        super().__init__()
        self.conv = conv
        self._transformed_weight = None
        self._transformed_from = None
        self._transformed_version = None

    def _current_transformed_weight(self):
        weight, source = self.conv.weight, self._transformed_from
        # The source is kept (detached: same storage), so that its storage cannot be freed and
        # reused by another weight at the same address.
        if (
            source is None
            or source.data_ptr() != weight.data_ptr()
            or source.dtype != weight.dtype
            or weight.is_inference()  # no version counter: no way to tell
            or weight._version != self._transformed_version
        ):
            with torch.no_grad():
                self._transformed_weight = winograd_transform_weight(weight)
            self._transformed_from = weight.detach()
            self._transformed_version = None if weight.is_inference() else weight._version
        return self._transformed_weight

    def __getstate__(self):
        state = self.__dict__.copy()
        state["_transformed_weight"] = state["_transformed_from"] = None
        return state

    def forward(self, x):
        conv = self.conv
        if (
            x.dim() != 4
            or not is_cpu_float32_inference(x)
            or _num_output_tiles(x.shape, conv.padding) < self.min_tiles
        ):
            return conv(x)
        out = winograd_conv3x3(x, self._current_transformed_weight(), conv.bias, conv.padding)
        return self._norm_and_activation(out)

    def forward_maps(self, xs):
        """``[self(x) for x in xs]``, the maps batched into Winograd products of up to
        ``_MAX_TILES`` tiles (:func:`winograd_conv3x3_maps`); a batch of fewer than
        ``min_tiles`` tiles runs the wrapped conv."""
        conv = self.conv
        if any(x.dim() != 4 for x in xs) or not all(is_cpu_float32_inference(x) for x in xs):
            return [self(x) for x in xs]
        counts = [_num_output_tiles(x.shape, conv.padding) for x in xs]
        outs = []
        for group in _tile_groups(counts, _MAX_TILES):
            maps = [xs[i] for i in group]
            if sum(counts[i] for i in group) < self.min_tiles:
                outs.extend(conv(x) for x in maps)
                continue
            batched = winograd_conv3x3_maps(
                maps, self._current_transformed_weight(), conv.bias, conv.padding
            )
            outs.extend(self._norm_and_activation(out) for out in batched)
        return outs

    def _norm_and_activation(self, out):
        # Those of detectron2's Conv2d, after the convolution.
        if getattr(self.conv, "norm", None) is not None:
            out = self.conv.norm(out)
        if getattr(self.conv, "activation", None) is not None:
            out = self.conv.activation(out)
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
        and min(module.in_channels, module.out_channels) >= _WinogradConv2d.min_channels
    ):
        return _WinogradConv2d(module)
    return None


class _LevelBatchedRPNHead(nn.Module):
    """detectron2's :class:`StandardRPNHead` whose 3x3 conv, shared by all levels, runs as one
    Winograd convolution of all of them (:meth:`_WinogradConv2d.forward_maps`): the small
    levels' few tiles join the large ones' matrix products instead of running the direct
    conv one level at a time. The outputs are the head's."""

    def __init__(self, head: StandardRPNHead):
        super().__init__()
        self.head = head

    def forward(self, features):
        head = self.head
        hidden = head.conv.forward_maps(features)
        return [head.objectness_logits(t) for t in hidden], [head.anchor_deltas(t) for t in hidden]


def _level_batched_rpn_head(module):
    # After the Winograd rewrite: the head's conv is wrapped if it is wide enough.
    if type(module) is StandardRPNHead and type(module.conv) is _WinogradConv2d:
        return _LevelBatchedRPNHead(module)
    return None


class _GemmConvTranspose2d(nn.Module):
    """A transposed convolution computed as one matrix product, (pixels, C_in) x (C_in,
    C_out * kh * kw), whose columns are then summed into the output by ``F.fold`` (col2im).
    oneDNN's transposed conv runs the heatmap predictor of the keypoint heads (20 RoIs, 512 ->
    17 channels, 14x14 -> 28x28, 4x4 kernel, stride 2) in 10.7 ms on 2 cores, this in 7.9 ms.
    Outside :func:`~.roi_pooling.is_cpu_float32_inference`, for empty or unbatched inputs and
    with ``output_size`` the transposed conv runs as it is. The output is NCHW."""

    def __init__(self, deconv: nn.ConvTranspose2d):
        super().__init__()
        self.deconv = deconv
        self.make_weight_contiguous()

    def make_weight_contiguous(self):
        """Make (C_in, C_out * kh * kw) a view of the weight; ``model.to(memory_format=
        torch.channels_last)`` makes it channels-last again."""
        weight = self.deconv.weight
        if not weight.is_contiguous():
            self.deconv.weight = nn.Parameter(weight.detach().contiguous(), weight.requires_grad)

    def forward(self, x, output_size=None):
        deconv = self.deconv
        if (
            output_size is not None
            or x.dim() != 4
            or x.shape[0] == 0
            or not is_cpu_float32_inference(x)
        ):
            return deconv(x, output_size)
        n, in_channels, height, width = x.shape
        output_size = [
            (size - 1) * stride - 2 * pad + dilation * (kernel - 1) + extra + 1
            for size, stride, pad, dilation, kernel, extra in zip(
                (height, width),
                deconv.stride,
                deconv.padding,
                deconv.dilation,
                deconv.kernel_size,
                deconv.output_padding,
            )
        ]
        columns = torch.mm(
            x.permute(0, 2, 3, 1).reshape(n * height * width, in_channels),
            deconv.weight.reshape(in_channels, -1),
        )
        out = F.fold(
            columns.view(n, height * width, -1).transpose(1, 2),
            output_size,
            deconv.kernel_size,
            dilation=deconv.dilation,
            padding=deconv.padding,
            stride=deconv.stride,
        )
        if deconv.bias is not None:
            out += deconv.bias.view(-1, 1, 1)
        return out


def _gemm_conv_transpose(module):
    if (
        type(module) is nn.ConvTranspose2d
        and module.groups == 1
        and module.padding_mode == "zeros"
        and isinstance(module.padding, tuple)
        # PyTorch also allows output_padding < dilation; col2im only < stride.
        and all(extra < stride for extra, stride in zip(module.output_padding, module.stride))
    ):
        return _GemmConvTranspose2d(module)
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


def _best_first_rpns(model: nn.Module) -> int:
    """Make every detectron2 :class:`RPN` of ``model`` a :class:`BestFirstRPN`, in place (same
    object, submodules and settings); returns how many."""
    changed = 0
    for module in model.modules():
        if type(module) is RPN:
            module.__class__ = BestFirstRPN
            changed += 1
    return changed


# Convs whose forward returns a new tensor.
_CONVS = _PLAIN_CONVS + (EDWConv, DWConv, _SplitEDWConv, _WinogradConv2d)
# Sequentials whose forward passes each layer's output to the next layer only: detectron2's
# keypoint heads iterate over their layers so (``layers``); other subclasses may not.
_LAYER_CHAINS = (nn.Sequential, KRCNNConvDeconvUpsampleHead, KRCNNSeparableConvDeconvUpsampleHead)


def _relus_in_place(model: nn.Module) -> int:
    """Make ``nn.ReLU`` modules that directly follow a conv in an ``nn.Sequential`` or a keypoint
    head (:data:`_LAYER_CHAINS`) in-place: the conv's output is a new tensor that only the ReLU
    reads, and rectifying it in place saves a pass over it and its allocation (20 RoIs of
    512 x 14 x 14: 8 MB per conv). Returns how many."""
    changed = 0
    for module in model.modules():
        if type(module) not in _LAYER_CHAINS:
            continue
        for first, second in zip(module, list(module)[1:]):
            if type(second) is nn.ReLU and not second.inplace and type(first) in _CONVS:
                second.inplace = True
                changed += 1
    return changed


# Modules made by the rewrites: their children are not rewritten again.
_REWRITTEN = (
    _SplitEDWConv,
    _WinogradConv2d,
    _LevelBatchedRPNHead,
    _GemmConvTranspose2d,
    ChannelsLastROIPooler,
    _ChannelsLastFlattenLinear,
)


def optimize_for_inference(model: nn.Module, device=None) -> nn.Module:
    """
    Apply the rewrites of this module to ``model`` in place and return it.

    Args:
        model: a built detectron2 model (e.g. ``build_model(cfg)`` with its weights loaded) in
            eval mode. It can no longer be trained afterwards (norms are gone), and its state
            dict is not the model's: save and load models as built.
        device: where it will run; default: the device of its parameters. The CPU-only
            rewrites are skipped elsewhere.

    Forward hooks registered on modules that a rewrite replaces or computes differently (a
    folded norm, a conv run by Winograd, the RPN head's conv run once for all levels) do not
    run on the rewritten path: register hooks on the optimized model's modules. A hook that
    keeps the output of a conv followed by a ReLU made in-place sees it rectified.
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
        counts["Winograd convs"] = _replace_modules(model, _winograd_conv)
        counts["level-batched RPN heads"] = _replace_modules(model, _level_batched_rpn_head)
        counts["best-first RPN proposal selections"] = _best_first_rpns(model)
        counts["in-place ReLUs"] = _relus_in_place(model)
        model.to(memory_format=torch.channels_last)
        for module in model.modules():
            if isinstance(module, _GemmConvTranspose2d):  # from an earlier call
                module.make_weight_contiguous()
        counts["transposed convs"] = _replace_modules(model, _gemm_conv_transpose)
    logger.info(
        "optimize_for_inference (%s): %s",
        device,
        ", ".join(f"{count} {what}" for what, count in counts.items()),
    )
    return model
