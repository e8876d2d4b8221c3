"""The keypoint head of the paper: detectron2's stock head with a choice of convolution."""
from torch import nn

from detectron2.config import configurable
from detectron2.layers import ConvTranspose2d
from detectron2.modeling.roi_heads.keypoint_head import (
    ROI_KEYPOINT_HEAD_REGISTRY,
    KRCNNConvDeconvUpsampleHead,
)

from ...data.catalog import num_keypoints
from ..layers import conv_class_of_type, xavier_fill_convs
from .conv_types import conv_type_arguments
from .keypoint_decoding import keypoint_rcnn_inference

__all__ = ["KRCNNConfigurableConvDeconvUpsampleHead"]


@ROI_KEYPOINT_HEAD_REGISTRY.register()
class KRCNNConfigurableConvDeconvUpsampleHead(KRCNNConvDeconvUpsampleHead):
    """
    The "Key-points Estimation Network" of the paper (Sec. III-B): detectron2's
    :class:`KRCNNConvDeconvUpsampleHead` (3x3 convs + ReLU, a 4x4 stride-2 transposed conv to
    the keypoint heatmaps, then bilinear x2 upsampling) whose 3x3 convs are, by ``conv_type``:

    * ``"vanilla"``: detectron2's :class:`Conv2d`, as in the stock head (same modules, names and
      parameters, so checkpoints are interchangeable);
    * ``"dw"``: :class:`DWConv`, a depthwise separable conv;
    * ``"edw"``: :class:`EDWConv` with ``expand_factor`` depthwise filters per input channel.

    Every weight is initialized by Xavier's initializer and every bias to 0, as in the paper
    (Sec. IV-A), where the stock head uses MSRA: "vanilla" is the paper's keypoint head, not
    detectron2's. (The paper configs keep detectron2's RPN and box head, initialization
    included, so that the keypoint head is all that differs from detectron2's Keypoint R-CNN on
    top of the backbone.) Losses are the stock ones; inference gives the stock outputs, decoded
    by :func:`.keypoint_decoding.heatmaps_to_keypoints`.
    """

    @configurable
    def __init__(
        self, input_shape, *, num_keypoints, conv_dims, conv_type, expand_factor, **kwargs
    ):
        """
        Args:
            input_shape, num_keypoints, conv_dims, kwargs: as in
                :class:`KRCNNConvDeconvUpsampleHead`.
            conv_type (str): "vanilla", "dw" or "edw" (``MODEL.ROI_KEYPOINT_HEAD.CONV_TYPE``).
            expand_factor (int >= 1): e of "edw" (``MODEL.ROI_KEYPOINT_HEAD.EXPAND_FACTOR``).
        """
        conv_class = conv_class_of_type(conv_type, expand_factor)

        # KRCNNConvDeconvUpsampleHead.__init__ hard-codes vanilla convs and MSRA init, so it is
        # skipped (letting it build convs to replace them would allocate and initialize ~18M
        # parameters for nothing with the stock CONV_DIMS) and its modules are built here under
        # the same names and in the same order: its layers() runs them in registration order.
        super(KRCNNConvDeconvUpsampleHead, self).__init__(num_keypoints=num_keypoints, **kwargs)
        in_channels = input_shape.channels
        for idx, layer_channels in enumerate(conv_dims, 1):
            conv = conv_class(in_channels, layer_channels, 3, stride=1, padding=1)
            self.add_module(f"conv_fcn{idx}", conv)
            self.add_module(f"conv_fcn_relu{idx}", nn.ReLU())
            in_channels = layer_channels

        deconv_kernel = 4
        self.score_lowres = ConvTranspose2d(
            in_channels, num_keypoints, deconv_kernel, stride=2, padding=deconv_kernel // 2 - 1
        )
        self.up_scale = 2.0

        xavier_fill_convs(self)

    def forward(self, x, instances):
        if self.training:
            return super().forward(x, instances)
        keypoint_rcnn_inference(self.layers(x), instances)
        return instances

    @classmethod
    def from_config(cls, cfg, input_shape):
        # NUM_KEYPOINTS -1 is the number of keypoints of the config's datasets.
        count = num_keypoints(cfg)
        if count != cfg.MODEL.ROI_KEYPOINT_HEAD.NUM_KEYPOINTS:
            cfg = cfg.clone()
            cfg.defrost()
            cfg.MODEL.ROI_KEYPOINT_HEAD.NUM_KEYPOINTS = count
        return {
            **super().from_config(cfg, input_shape),
            **conv_type_arguments(cfg, "ROI_KEYPOINT_HEAD"),
        }
