"""Norm folding: a frozen or eval-mode BatchNorm after a convolution is an affine map per
channel, folded into the convolution's weight and bias, which saves a pass over its output.

It folds detectron2's :class:`Conv2d` with a ``norm`` and ``conv, norm`` pairs in
``nn.Sequential`` (such as torchvision's ``Conv2dNormActivation`` in the MobileNetV3 blocks).
"""

import torch
from torch import nn
from torch.nn.utils.fusion import fuse_conv_bn_weights

from detectron2.layers import FrozenBatchNorm2d

from .module_replacement import PLAIN_CONVS

__all__ = ["fold_conv_norms"]


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
        if type(module) in PLAIN_CONVS and norm is not None and _is_foldable_norm(norm):
            # detectron2's Conv2d: conv -> norm -> activation.
            _fold_into(module, norm)
            module.norm = None
            folded += 1
        elif isinstance(module, nn.Sequential):
            children = list(module.named_children())
            for (_, first), (name, second) in zip(children, children[1:]):
                if (
                    type(first) in PLAIN_CONVS
                    and getattr(first, "norm", None) is None
                    and getattr(first, "activation", None) is None
                    and _is_foldable_norm(second)
                ):
                    _fold_into(first, second)
                    setattr(module, name, nn.Identity())
                    folded += 1
    return folded
