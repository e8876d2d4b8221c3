"""Inference-time rewrites of a built model that keep what it computes and make it faster on CPU.

:func:`optimize_for_inference` applies them, in place, to any detectron2 model (ours or stock),
in the order of :data:`REWRITES`; ``skip`` leaves any of them out. Norm folding applies on every
device, the others on CPU only. What each does and buys: docs/speed.md, "CPU inference rewrites".

Each rewrite gives the same result up to float rounding (folding reorders a product, the
EDWConv split sums in another order, NMS on fewer boxes may shift them by level); ``tests/test_optimize.py``
checks equal detections with boxes and keypoints within 0.01 px.
"""

import logging

import torch
from torch import nn

from .best_first_rpn import select_rpn_proposals_best_first
from .channels_last_roi import pool_rois_channels_last
from .edwconv_split import split_edwconvs
from .inference_gate import is_cpu_float32_inference
from .norm_folding import fold_conv_norms

__all__ = ["REWRITES", "fold_conv_norms", "is_cpu_float32_inference", "optimize_for_inference"]

logger = logging.getLogger(__name__)


def _channels_last(model: nn.Module) -> dict:
    # oneDNN's depthwise and 1x1 convolutions run faster on NHWC tensors, and the layout then
    # propagates from conv to conv (the input image stays NCHW until the first conv).
    model.to(memory_format=torch.channels_last)
    return {}


# name -> (CPU only, rewrite returning {what: count}), in the order they are applied.
_REWRITE_STEPS = {
    "fold_norms": (False, lambda model: {"folded norms": fold_conv_norms(model)}),
    "split_edwconv": (True, lambda model: {"EDWConvs": split_edwconvs(model)}),
    "channels_last_roi": (True, pool_rois_channels_last),
    "best_first_rpn": (
        True,
        lambda model: {
            "best-first RPN proposal selections": select_rpn_proposals_best_first(model)
        },
    ),
    "channels_last": (True, _channels_last),
}
# The rewrites' names, in the order they are applied: what ``skip`` takes.
REWRITES = tuple(_REWRITE_STEPS)


def optimize_for_inference(model: nn.Module, device=None, skip=()) -> nn.Module:
    """
    Apply the rewrites of :data:`REWRITES` to ``model`` in place and return it.

    Args:
        model: a built detectron2 model (e.g. ``build_model(cfg)`` with its weights loaded) in
            eval mode. It can no longer be trained afterwards (norms are gone), and its state
            dict is not the model's: save and load models as built.
        device: where it will run; default: the device of its parameters. The CPU-only
            rewrites are skipped elsewhere.
        skip: names of :data:`REWRITES` to leave out (e.g. to measure what one buys).

    Forward hooks registered on modules that a rewrite replaces or computes differently (a
    folded norm, a split EDWConv, a replaced RoI pooler) do not run on the rewritten path:
    register hooks on the optimized model's modules.
    """
    unknown = sorted(set(skip) - set(REWRITES))
    if unknown:
        raise ValueError(f"unknown rewrites {unknown} in skip; the rewrites are {REWRITES}")
    if model.training:
        raise ValueError(
            "optimize_for_inference folds BatchNorms with their running statistics, which is "
            "only valid for inference: call model.eval() first"
        )
    if device is None:
        device = next(model.parameters(), torch.empty(0)).device
    device = torch.device(device)
    counts = {}
    for name, (cpu_only, rewrite) in _REWRITE_STEPS.items():
        if name not in skip and (device.type == "cpu" or not cpu_only):
            counts.update(rewrite(model))
    logger.info(
        "optimize_for_inference (%s): %s",
        device,
        ", ".join(f"{count} {what}" for what, count in counts.items()),
    )
    return model
