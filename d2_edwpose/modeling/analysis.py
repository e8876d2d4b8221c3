"""Parameters and FLOPs of a Keypoint R-CNN, split by part, at its fixed input size, and the
config such an analysis (and the benchmark) builds its model from.

FLOPs are counted by fvcore's FlopCountAnalysis as detectron2 counts them (one fused
multiply-add = one flop) on one image of INPUT.FIXED_SIZE (320x320 for the paper configs):

- backbone: bottom-up network + FPN;
- RPN: the RPN head on all levels (anchor decoding and NMS are not FLOPs);
- box head: per RoI (RoIAlign excluded), and for the ``MODEL.RPN.POST_NMS_TOPK_TEST``
  proposals that reach it at inference;
- keypoint head: per RoI, i.e. per detected person (RoIAlign excluded).
"""
import torch
from torch import nn
from fvcore.nn import FlopCountAnalysis

from detectron2.modeling import build_model

from ..model_zoo import load_config

__all__ = ["analysis_config", "analyze"]


def analysis_config(config_file, fixed_size=(320, 320), opts=()):
    """The config of ``config_file`` as analysed and benchmarked: on CPU, with random weights
    (no ``MODEL.WEIGHTS``), at ``INPUT.FIXED_SIZE`` ``fixed_size``; then the ``KEY VALUE``
    overrides ``opts``, which may set any of these too."""
    settings = ["MODEL.DEVICE", "cpu", "MODEL.WEIGHTS", "", "INPUT.FIXED_SIZE", tuple(fixed_size)]
    return load_config(config_file, [*settings, *opts])


class _KeypointHeadLayers(nn.Module):
    """The keypoint head up to its heatmap logits (``layers``), as a module fvcore can trace."""

    def __init__(self, head):
        super().__init__()
        self.head = head

    def forward(self, x):
        return self.head.layers(x)


def _flops(module, inputs):
    analysis = FlopCountAnalysis(module, inputs)
    analysis.unsupported_ops_warnings(False)
    analysis.uncalled_modules_warnings(False)
    return analysis.total()


def _params(*modules):
    return sum(p.numel() for m in modules for p in m.parameters())


@torch.no_grad()
def analyze(cfg, name):
    """Parameter and FLOP counts of the parts of the model built from ``cfg``."""
    model = build_model(cfg).eval()
    height, width = cfg.INPUT.FIXED_SIZE
    image = torch.zeros(1, 3, height, width)
    features = model.backbone(image)
    rpn = model.proposal_generator
    rpn_features = [features[f] for f in rpn.in_features]
    heads = model.roi_heads
    box_channels = features[heads.box_in_features[0]].shape[1]
    box_res = cfg.MODEL.ROI_BOX_HEAD.POOLER_RESOLUTION
    kp_res = cfg.MODEL.ROI_KEYPOINT_HEAD.POOLER_RESOLUTION
    box_roi = torch.zeros(1, box_channels, box_res, box_res)
    kp_roi = torch.zeros(1, box_channels, kp_res, kp_res)

    box_head_flops = _flops(heads.box_head, (box_roi,))
    box_head_flops += _flops(heads.box_predictor, (heads.box_head(box_roi),))
    keypoint_head_flops = _flops(_KeypointHeadLayers(heads.keypoint_head), (kp_roi,))
    num_proposals = cfg.MODEL.RPN.POST_NMS_TOPK_TEST
    return {
        "model": name,
        "backbone_params": _params(model.backbone),
        "backbone_gflops": _flops(model.backbone, (image,)) / 1e9,
        "rpn_params": _params(rpn),
        "rpn_gflops": _flops(rpn.rpn_head, (rpn_features,)) / 1e9,
        "box_head_params": _params(heads.box_head, heads.box_predictor),
        "box_head_mflops_per_roi": box_head_flops / 1e6,
        "box_head_gflops_at_test": box_head_flops * num_proposals / 1e9,
        "test_proposals": num_proposals,
        "keypoint_head_params": _params(heads.keypoint_head),
        "keypoint_head_gflops_per_roi": keypoint_head_flops / 1e9,
        "total_params": _params(model),
    }
