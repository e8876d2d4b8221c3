"""Winograd 3x3 convolutions and the level-batched RPN head.

Wide 3x3 stride-1 convs (the FPN's and RPN's, the vanilla keypoint head's) run the Winograd
algorithm F(4x4, 3x3) on channels-last maps: 4x fewer multiply-adds than the direct conv,
written with PyTorch's batched matrix products. The RPN head's conv, shared by all levels, runs
on all of them at once, so that the small levels' few tiles join the large ones' products.
"""

import torch
from torch import nn
from torch.nn import functional as F

from detectron2.modeling.proposal_generator.rpn import StandardRPNHead

from . import is_cpu_float32_inference
from .module_replacement import PLAIN_CONVS, Rewritten, replace_modules

__all__ = [
    "LevelBatchedRPNHead",
    "WinogradConv2d",
    "convs_by_winograd",
    "winograd_conv",
    "winograd_conv3x3",
    "winograd_conv3x3_maps",
    "winograd_transform_weight",
]

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
            outs.append(
                winograd_conv3x3(xs[group[0]], transformed_weight, bias, padding, max_tiles)
            )
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


class WinogradConv2d(Rewritten, nn.Module):
    """A 3x3, stride-1 convolution run by :func:`winograd_conv3x3` for CPU inference
    (:func:`~d2_edwpose.modeling.cpu_inference.is_cpu_float32_inference`) on inputs of at least
    ``min_tiles`` 4x4 output tiles; with fewer the (tiles, C) matrix products are too small to
    run fast and the wrapped conv runs as it is. Only convs with at least ``min_channels`` input
    and output channels are wrapped: with fewer the tile transforms, which cost per value, not
    per multiply-add, outweigh the saving (64 -> 64 channels on 80x80 ran no faster than
    oneDNN's direct conv; the thresholds' measurements are in docs/speed.md). Results differ
    from the direct convolution's by float rounding (relative ~5e-5 at 512 input channels).

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


def winograd_conv(module):
    """The :class:`WinogradConv2d` of a wide 3x3, stride-1 plain conv, else None."""
    if (
        type(module) in PLAIN_CONVS
        and module.kernel_size == (3, 3)
        and module.stride == (1, 1)
        and module.dilation == (1, 1)
        and module.groups == 1
        and module.padding_mode == "zeros"
        and isinstance(module.padding, tuple)
        and min(module.in_channels, module.out_channels) >= WinogradConv2d.min_channels
    ):
        return WinogradConv2d(module)
    return None


class LevelBatchedRPNHead(Rewritten, nn.Module):
    """detectron2's :class:`StandardRPNHead` whose 3x3 conv, shared by all levels, runs as one
    Winograd convolution of all of them (:meth:`WinogradConv2d.forward_maps`): the small
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
    if type(module) is StandardRPNHead and type(module.conv) is WinogradConv2d:
        return LevelBatchedRPNHead(module)
    return None


def convs_by_winograd(model: nn.Module) -> dict:
    """Wrap the wide 3x3 convs of ``model`` in :class:`WinogradConv2d`, then batch the levels of
    the RPN heads whose conv was wrapped; returns the counts of both."""
    return {
        "Winograd convs": replace_modules(model, winograd_conv),
        "level-batched RPN heads": replace_modules(model, _level_batched_rpn_head),
    }
