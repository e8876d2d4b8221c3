"""A light box head for the realtime config: detectron2's conv+fc box head with separable convs."""
from torch import nn

from detectron2.config import configurable
from detectron2.layers import get_norm
from detectron2.modeling.roi_heads.box_head import ROI_BOX_HEAD_REGISTRY, FastRCNNConvFCHead

from ..layers import conv_class_of_type, xavier_fill_convs
from .conv_types import conv_type_arguments

__all__ = ["FastRCNNConfigurableConvFCHead"]


@ROI_BOX_HEAD_REGISTRY.register()
class FastRCNNConfigurableConvFCHead(FastRCNNConvFCHead):
    """
    detectron2's :class:`FastRCNNConvFCHead` (3x3 convs, each followed by norm and ReLU, then
    fully connected layers with ReLU) whose convs are, by ``conv_type``, DWConv ("dw"), EDWConv
    ("edw") or the stock ones ("vanilla": then it is the stock head) -- the paper's keypoint-head
    idea applied to the detection network. A few narrow separable convs and one small fc layer
    replace the stock two 1024-wide fc layers, the largest cost of the stock box head
    (docs/model.md).

    Separable convs are initialised like the keypoint head's (per-group Xavier): the stock
    head's MSRA fill takes a depthwise conv's fan-out from the weight shape, d_i times too large.
    """

    @configurable
    def __init__(self, input_shape, *, conv_dims, fc_dims, conv_norm="", conv_type, expand_factor):
        """
        Args:
            input_shape, conv_dims, fc_dims, conv_norm: as in :class:`FastRCNNConvFCHead`.
            conv_type (str): "vanilla", "dw" or "edw" (``MODEL.ROI_BOX_HEAD.CONV_TYPE``).
            expand_factor (int >= 1): e of "edw" (``MODEL.ROI_BOX_HEAD.EXPAND_FACTOR``).
        """
        conv_class = conv_class_of_type(conv_type, expand_factor)
        super().__init__(input_shape, conv_dims=conv_dims, fc_dims=fc_dims, conv_norm=conv_norm)
        if conv_type == "vanilla":  # the stock head, MSRA init included
            return
        # The stock convs are small (conv_dims x conv_dims x 3 x 3): replaced in place, under the
        # same names, so that the module order of the nn.Sequential (its forward) is kept.
        for k, stock in enumerate(self.conv_norm_relus):
            conv = conv_class(
                stock.in_channels,
                stock.out_channels,
                3,
                padding=1,
                bias=not conv_norm,
                norm=get_norm(conv_norm, stock.out_channels),
                activation=nn.ReLU(),
            )
            xavier_fill_convs(conv)
            setattr(self, f"conv{k + 1}", conv)
            self.conv_norm_relus[k] = conv

    @classmethod
    def from_config(cls, cfg, input_shape):
        return {**super().from_config(cfg, input_shape), **conv_type_arguments(cfg, "ROI_BOX_HEAD")}
