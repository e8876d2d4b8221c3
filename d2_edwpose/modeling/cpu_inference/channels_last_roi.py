"""Channels-last RoI pooling: RoIAlign over channels-last feature maps as one weighted gather,
for CPU inference, and box heads that flatten its output in memory order.

torchvision's CPU ``roi_align`` walks NCHW planes one channel at a time: per RoI it computes
the bilinear sampling positions and weights once, then reads four scattered pixels per sample
for each of the C channels. In channels-last memory the C values of one pixel are contiguous,
so every sample is instead four weighted C-vector reads, which
:func:`torch.nn.functional.embedding_bag` (``mode="sum"`` with ``per_sample_weights``) does
vectorised and multi-threaded, for all FPN levels in one call (detectron2's
:class:`~detectron2.modeling.poolers.ROIPooler` zero-fills an output and pools level by level).

The weights are those of torchvision's kernel (``aligned`` offsets, adaptive sampling grid,
samples outside the map, clamping at its borders); only the order of the float sums differs.
"""

from typing import List

import torch
from torch import nn
from torch.nn import functional as F

from detectron2.layers import ROIAlign
from detectron2.modeling.poolers import (
    ROIPooler,
    assign_boxes_to_levels,
    convert_boxes_to_pooler_format,
)
from detectron2.structures import Boxes

from .inference_gate import is_cpu_float32_inference
from .module_replacement import Rewritten, replace_modules

__all__ = [
    "ChannelsLastFlattenLinear",
    "ChannelsLastROIPooler",
    "pool_rois_channels_last",
    "roi_align_sampling",
]


def _axis_sampling(start, extent, length, pooled: int, sampling_ratio: int, aligned: bool):
    """
    Bilinear sampling along one axis for R RoIs, as torchvision's ``roi_align`` computes it.

    Args:
        start, extent (Tensor[R]): the RoIs' start and extent in feature-map pixels on this axis
            (``aligned`` offset already applied to ``start``).
        length (Tensor[R]): the feature map's size on this axis, per RoI.
        pooled: output bins on this axis.

    Returns:
        (indices, weights, grid): ``indices`` (long) and ``weights`` of shape (R, pooled, S),
        the pixels each bin reads along this axis and their bilinear weights (not yet divided
        by the sample count; with an adaptive grid, summed per pixel), and ``grid`` (long, R),
        the samples per bin.
    """
    if not aligned:
        extent = extent.clamp(min=1.0)
    bin_size = extent / pooled
    if sampling_ratio > 0:
        grid = torch.full_like(extent, sampling_ratio, dtype=torch.long)
    else:
        grid = torch.ceil(extent / pooled).long()
    grid = grid.clamp(min=0)
    max_grid = max(int(grid.max()), 1)
    bins = torch.arange(pooled, dtype=extent.dtype, device=extent.device)
    samples = torch.arange(max_grid, dtype=extent.dtype, device=extent.device)
    grid_f = grid.clamp(min=1).to(extent.dtype)
    # (R, pooled, max_grid), computed in the kernel's order of operations.
    position = (
        start[:, None, None]
        + bins[None, :, None] * bin_size[:, None, None]
        + (samples[None, None, :] + 0.5) * bin_size[:, None, None] / grid_f[:, None, None]
    )
    size = length.to(extent.dtype)[:, None, None]
    valid = (samples[None, None, :] < grid[:, None, None]) & (position >= -1.0) & (position <= size)
    position = position.clamp(min=0.0)
    low = position.floor()
    at_border = low >= size - 1
    low = torch.where(at_border, size - 1, low)
    position = torch.where(at_border, low, position)
    high = torch.where(at_border, low, low + 1)
    high_weight = (position - low) * valid
    low_weight = (1.0 - (position - low)) * valid
    low, high = low.long(), high.long()

    if sampling_ratio > 0:
        # Samples may be more than a pixel apart: keep each sample's two pixels.
        return torch.cat([low, high], dim=2), torch.cat([low_weight, high_weight], dim=2), grid
    # Adaptive grids put samples at most a pixel apart, so a bin reads max_grid + 1 consecutive
    # pixels from its first sample's low pixel: merge the samples' weights per pixel.
    first = low[:, :, :1]
    slots = max_grid + 1
    weights = torch.zeros(low.shape[:2] + (slots,), dtype=extent.dtype, device=extent.device)
    # Invalid samples carry zero weight; clamping keeps their slots in range.
    weights.scatter_add_(2, (low - first).clamp(0, slots - 1), low_weight)
    weights.scatter_add_(2, (high - first).clamp(0, slots - 1), high_weight)
    offsets = torch.arange(slots, device=low.device)
    indices = torch.minimum(first + offsets, length[:, None, None] - 1)
    return indices, weights, grid


def roi_align_sampling(
    rois, heights, widths, spatial_scales, first_rows, output_size, sampling_ratio, aligned
):
    """
    RoIAlign as a sparse weighted sum of rows of a (pixels, C) table of channels-last features.

    Args:
        rois (Tensor[R, 5]): (batch index, x0, y0, x1, y1) in image coordinates.
        heights, widths, spatial_scales, first_rows (Tensor[R]): per RoI, the size and scale of
            its feature map and the table row of the map's pixel (0, 0) in its first image; the
            map of image b starts ``b * height * width`` rows later.
        output_size (tuple[int, int]), sampling_ratio, aligned: as in torchvision's
            ``roi_align``.

    Returns:
        (indices, weights): both of shape (R * output_h * output_w, S), one row per output bin
        in (RoI, y, x) order; bin values are ``embedding_bag(indices, table, mode="sum",
        per_sample_weights=weights)``.
    """
    offset = 0.5 if aligned else 0.0
    scale = spatial_scales.to(rois.dtype)
    x0, y0, x1, y1 = (rois[:, k] * scale - offset for k in range(1, 5))
    pooled_h, pooled_w = output_size
    y_idx, y_w, y_grid = _axis_sampling(y0, y1 - y0, heights, pooled_h, sampling_ratio, aligned)
    x_idx, x_w, x_grid = _axis_sampling(x0, x1 - x0, widths, pooled_w, sampling_ratio, aligned)
    count = (y_grid * x_grid).clamp(min=1).to(rois.dtype)
    image_rows = first_rows + rois[:, 0].long() * heights * widths
    # (R, pooled_h, pooled_w, S_y, S_x)
    indices = (
        image_rows[:, None, None, None, None]
        + y_idx[:, :, None, :, None] * widths[:, None, None, None, None]
        + x_idx[:, None, :, None, :]
    )
    weights = y_w[:, :, None, :, None] * x_w[:, None, :, None, :] / count[:, None, None, None, None]
    num_bins = rois.shape[0] * pooled_h * pooled_w
    return indices.reshape(num_bins, -1), weights.reshape(num_bins, -1)


def _pixel_table(x: List[torch.Tensor], rows: List[int]) -> torch.Tensor:
    """The pixels of all maps in ``x`` as rows of one (sum(rows), C) tensor, NHWC order."""
    num_channels = x[0].shape[1]
    if len(x) == 1 and x[0].is_contiguous(memory_format=torch.channels_last):
        return x[0].permute(0, 2, 3, 1).reshape(rows[0], num_channels)
    table = x[0].new_empty(sum(rows), num_channels)
    for features, part in zip(x, table.split(rows)):
        # One copy per map, whatever its layout.
        part.view(len(features), features.shape[2], features.shape[3], -1).copy_(
            features.permute(0, 2, 3, 1)
        )
    return table


class ChannelsLastROIPooler(Rewritten, ROIPooler):
    """
    detectron2's :class:`ROIPooler` for ``ROIAlign``/``ROIAlignV2``, pooling CPU inference
    calls with one weighted gather over all levels (module docstring). It returns the
    same (M, C, output_h, output_w) tensor up to float rounding, in channels-last memory.
    Outside :func:`is_cpu_float32_inference` (autograd, other devices and dtypes, autocast,
    tracing) it takes detectron2's path; it is not scriptable.
    """

    @classmethod
    def from_pooler(cls, pooler: ROIPooler) -> "ChannelsLastROIPooler":
        first = pooler.level_poolers[0]
        return cls(
            pooler.output_size,
            scales=[level.spatial_scale for level in pooler.level_poolers],
            sampling_ratio=first.sampling_ratio,
            pooler_type="ROIAlignV2" if first.aligned else "ROIAlign",
            canonical_box_size=pooler.canonical_box_size,
            canonical_level=pooler.canonical_level,
        )

    @staticmethod
    def supports(pooler) -> bool:
        # Exactly detectron2's ROIAlign: subclasses may pool differently.
        return type(pooler) is ROIPooler and all(
            type(level) is ROIAlign for level in pooler.level_poolers
        )

    # Above this fraction of zero-weight (padding) entries, the gather skips them: one large or
    # elongated RoI widens the sampling grid of every bin of the call.
    max_padding_fraction = 0.5

    def forward(self, x: List[torch.Tensor], box_lists: List[Boxes]):
        if not is_cpu_float32_inference(x[0]) or sum(len(boxes) for boxes in box_lists) == 0:
            return super().forward(x, box_lists)
        # detectron2's checks: a mismatch would read another map's pixels here.
        if len(x) != len(self.level_poolers):
            raise ValueError(f"{len(self.level_poolers)} feature maps expected, got {len(x)}")
        if len(box_lists) != x[0].shape[0]:
            raise ValueError(
                f"{x[0].shape[0]} images in the feature maps but {len(box_lists)} box lists"
            )
        rois = convert_boxes_to_pooler_format(box_lists)
        if len(self.level_poolers) == 1:
            levels = torch.zeros(rois.shape[0], dtype=torch.long)
        else:
            levels = assign_boxes_to_levels(
                box_lists,
                self.min_level,
                self.max_level,
                self.canonical_box_size,
                self.canonical_level,
            )
        # detectron2 pools a box with a NaN level (negative area, non-finite coordinates) on no
        # level: zeros. Such coordinates are zeroed too, so that no NaN reaches the weights.
        finite = torch.isfinite(rois).all(dim=1)
        rois = torch.where(finite[:, None], rois, 0.0)
        on_a_level = (levels >= 0) & (levels < len(x)) & finite
        levels = torch.where(on_a_level, levels, 0)
        num_channels = x[0].shape[1]
        rows = [len(features) * features.shape[2] * features.shape[3] for features in x]
        first_rows = torch.tensor([0] + rows[:-1]).cumsum(0)
        heights = torch.tensor([features.shape[2] for features in x])
        widths = torch.tensor([features.shape[3] for features in x])
        scales = torch.tensor([level.spatial_scale for level in self.level_poolers])
        first = self.level_poolers[0]
        indices, weights = roi_align_sampling(
            rois,
            heights[levels],
            widths[levels],
            scales[levels],
            first_rows[levels],
            self.output_size,
            first.sampling_ratio,
            first.aligned,
        )
        weights = weights.view(rois.shape[0], -1).mul_(on_a_level[:, None]).view(indices.shape)
        table = _pixel_table(x, rows)
        used = weights != 0
        if used.float().mean() < 1 - self.max_padding_fraction:
            # Variable-length bags of the used entries only (row-major masking keeps bag order).
            counts = used.sum(dim=1)
            pooled = F.embedding_bag(
                indices[used], table, counts.cumsum(0) - counts, mode="sum",
                per_sample_weights=weights[used],
            )  # fmt: skip
        else:
            pooled = F.embedding_bag(indices, table, mode="sum", per_sample_weights=weights)
        height, width = self.output_size
        return pooled.view(rois.shape[0], height, width, num_channels).permute(0, 3, 1, 2)


def _channels_last_pooler(module):
    if ChannelsLastROIPooler.supports(module):
        return ChannelsLastROIPooler.from_pooler(module)
    return None


class ChannelsLastFlattenLinear(Rewritten, nn.Module):
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
        setattr(head, flatten_name, ChannelsLastFlattenLinear(linear, channels, height, width))
        setattr(head, linear_name, nn.Identity())
        changed += 1
    return changed


def pool_rois_channels_last(model: nn.Module) -> dict:
    """Replace the RoIAlign poolers of ``model`` by :class:`ChannelsLastROIPooler`, then let the
    fc box heads that they feed flatten in memory order; returns the counts of both."""
    return {
        "channels-last RoI poolers": replace_modules(model, _channels_last_pooler),
        "channels-last box-feature flattens": _flatten_box_features_channels_last(model),
    }
