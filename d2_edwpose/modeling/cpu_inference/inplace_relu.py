"""In-place ReLUs: a conv's output is a new tensor that only the ReLU after it reads;
rectifying it in place saves a pass over it and its allocation."""

from torch import nn

from detectron2.modeling.roi_heads.keypoint_head import KRCNNConvDeconvUpsampleHead

from ...layers import DWConv, EDWConv
from ..roi_heads.keypoint_head import KRCNNSeparableConvDeconvUpsampleHead
from .edwconv_split import SplitEDWConv
from .module_replacement import PLAIN_CONVS
from .winograd import WinogradConv2d

__all__ = ["relus_in_place"]

# Convs whose forward returns a new tensor.
_CONVS = PLAIN_CONVS + (EDWConv, DWConv, SplitEDWConv, WinogradConv2d)
# Sequentials whose forward passes each layer's output to the next layer only: detectron2's
# keypoint heads iterate over their layers so (``layers``); other subclasses may not.
_LAYER_CHAINS = (nn.Sequential, KRCNNConvDeconvUpsampleHead, KRCNNSeparableConvDeconvUpsampleHead)


def relus_in_place(model: nn.Module) -> int:
    """Make ``nn.ReLU`` modules that directly follow a conv in an ``nn.Sequential`` or a keypoint
    head (:data:`_LAYER_CHAINS`) in-place; returns how many."""
    changed = 0
    for module in model.modules():
        if type(module) not in _LAYER_CHAINS:
            continue
        for first, second in zip(module, list(module)[1:]):
            if type(second) is nn.ReLU and not second.inplace and type(first) in _CONVS:
                second.inplace = True
                changed += 1
    return changed
