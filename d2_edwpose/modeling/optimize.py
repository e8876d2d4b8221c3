"""Inference-time rewrites of a built model that keep what it computes and make it faster on CPU.

:func:`optimize_for_inference` applies, in place, to any detectron2 model (ours or stock):

* **norm folding**: a frozen or eval-mode BatchNorm after a convolution is an affine map per
  channel, folded into the convolution's weight and bias (detectron2 :class:`Conv2d` with a
  ``norm``, and ``conv, norm`` pairs in ``nn.Sequential`` such as torchvision's
  ``Conv2dNormActivation`` in the MobileNetV3 blocks). It saves one pass over every feature map.
* **EDWConv's depthwise conv as a plain depthwise conv** (CPU): a grouped conv with
  ``groups == in_channels`` and ``e > 1`` filters per input channel misses oneDNN's depthwise
  kernel and runs ~9x slower than the same number of multiply-adds as a plain depthwise conv
  (one thread, 20 RoIs of 512 x 14 x 14, e = 2: 38 ms against 4 ms). EDWConv's depthwise
  conv is exactly a plain depthwise conv over its input tiled e times along channels (see
  :class:`_TiledInputEDWConv`).
* **channels-last memory format** (CPU): oneDNN's depthwise and 1x1 convolutions run faster
  on NHWC tensors, and the layout then propagates from conv to conv.
* **threaded RoIAlign** (CPU): torchvision's CPU ``roi_align`` uses one thread whatever
  ``torch.get_num_threads()``; the RoIs of one call are split into that many chunks pooled
  concurrently (the op releases the GIL). With 1,000 proposals it was the third-largest cost
  of the paper configs.

Each rewrite gives the same result up to float rounding (folding reorders a product);
``tests/test_optimize.py`` checks equal detections with boxes and keypoints within 0.01 px.
"""
import functools
import logging
import os
from concurrent.futures import ThreadPoolExecutor

import torch
from torch import nn
from torch.nn.utils.fusion import fuse_conv_bn_weights

from detectron2.layers import Conv2d, FrozenBatchNorm2d, ROIAlign

from ..layers import EDWConv

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


class _TiledInputEDWConv(nn.Module):
    """:class:`EDWConv` computed with a plain depthwise conv.

    EDWConv's depthwise output channel ``c * e + k`` is input channel ``c`` filtered by its k-th
    filter. Ordering the filters k-major instead (channel ``k * d_i + c``) makes it a plain
    depthwise conv over the input tiled e times along channels (a copy of whole channel
    blocks); the pointwise conv's input channels are permuted to match, so the sum it computes
    is the same. detectron2's ``norm`` and ``activation`` stay on the pointwise conv.
    """

    def __init__(self, edw: EDWConv):
        super().__init__()
        depthwise, self.pointwise = edw.depthwise, edw.pointwise
        in_channels, expanded = depthwise.in_channels, depthwise.out_channels
        self.expand_factor = expanded // in_channels
        # k-major position k * d_i + c of the filter at channel-major position c * e + k.
        order = torch.arange(expanded).view(in_channels, self.expand_factor).t().reshape(-1)
        self.depthwise = nn.Conv2d(
            expanded,
            expanded,
            depthwise.kernel_size,
            stride=depthwise.stride,
            padding=depthwise.padding,
            dilation=depthwise.dilation,
            groups=expanded,
            bias=False,
        ).to(depthwise.weight)
        with torch.no_grad():
            self.depthwise.weight.copy_(depthwise.weight[order])
            self.pointwise.weight = nn.Parameter(self.pointwise.weight[:, order])

    def forward(self, x):
        if x.is_contiguous(memory_format=torch.channels_last):
            # Tile in NHWC order so that the result stays channels-last.
            tiled = x.permute(0, 2, 3, 1).repeat(1, 1, 1, self.expand_factor).permute(0, 3, 1, 2)
        else:
            tiled = x.repeat(1, self.expand_factor, 1, 1)
        return self.pointwise(self.depthwise(tiled))


def _replace_modules(model: nn.Module, replacement) -> int:
    """Replace every submodule ``m`` for which ``replacement(m)`` is not None by it; returns
    how many were replaced."""
    replaced = 0
    for parent in list(model.modules()):
        for name, child in list(parent.named_children()):
            new = replacement(child)
            if new is not None:
                setattr(parent, name, new)
                replaced += 1
    return replaced


def _tiled_input_edwconv(module):
    # DWConv (e = 1) already is a plain depthwise conv.
    if isinstance(module, EDWConv) and module.depthwise.groups < module.depthwise.out_channels:
        return _TiledInputEDWConv(module)
    return None


@functools.lru_cache(maxsize=None)
def _executor(num_threads: int) -> ThreadPoolExecutor:
    return ThreadPoolExecutor(num_threads, thread_name_prefix="d2_edwpose_roi_align")


# A forked child (e.g. a DataLoader worker) inherits the pool without its threads.
os.register_at_fork(after_in_child=_executor.cache_clear)


class ThreadedROIAlign(ROIAlign):
    """detectron2's :class:`ROIAlign` that pools the RoIs of a CPU call in
    ``torch.get_num_threads()`` concurrent chunks (torchvision's CPU kernel is single-threaded).
    Other devices, autograd and small calls take the stock path."""

    min_rois_per_thread = 16

    def forward(self, input, rois):
        num_threads = torch.get_num_threads()
        chunks = min(num_threads, rois.shape[0] // self.min_rois_per_thread)
        if input.device.type != "cpu" or chunks < 2 or torch.is_grad_enabled():
            return super().forward(input, rois)
        # The kernel makes its input contiguous: once here rather than once per chunk.
        input = input.contiguous()
        pooled = _executor(num_threads).map(
            lambda part: super(ThreadedROIAlign, self).forward(input, part), rois.chunk(chunks)
        )
        return torch.cat(list(pooled))


def _threaded_roi_align(module):
    if type(module) is ROIAlign:
        return ThreadedROIAlign(
            module.output_size, module.spatial_scale, module.sampling_ratio, module.aligned
        )
    return None


def optimize_for_inference(model: nn.Module, device=None) -> nn.Module:
    """
    Apply the rewrites of this module to ``model`` in place and return it.

    Args:
        model: a built detectron2 model (e.g. ``build_model(cfg)`` with its weights loaded) in
            eval mode. It can no longer be trained afterwards: norms are gone.
        device: where it will run; default: the device of its parameters. The CPU-only
            rewrites are skipped elsewhere.
    """
    if model.training:
        raise ValueError(
            "optimize_for_inference folds BatchNorms with their running statistics, which is "
            "only valid for inference: call model.eval() first"
        )
    device = torch.device(device) if device is not None else next(model.parameters()).device
    counts = {"folded norms": fold_conv_norms(model)}
    if device.type == "cpu":
        counts["EDWConvs"] = _replace_modules(model, _tiled_input_edwconv)
        counts["threaded RoIAligns"] = _replace_modules(model, _threaded_roi_align)
        model.to(memory_format=torch.channels_last)
    logger.info(
        "optimize_for_inference (%s): %s",
        device,
        ", ".join(f"{count} {what}" for what, count in counts.items()),
    )
    return model
