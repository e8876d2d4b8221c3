"""Parameters and FLOPs of Keypoint R-CNN configs, split by part, at the fixed input size.

    python -m d2_edwpose.tools.analyze_model [CONFIG ...] [--stock-r50]

FLOPs are counted by fvcore's FlopCountAnalysis as detectron2 counts them (one fused
multiply-add = one flop) on one image of INPUT.FIXED_SIZE (320x320 for the paper configs):

- backbone: bottom-up network + FPN;
- RPN: the RPN head on all levels (anchor decoding and NMS are not FLOPs);
- box head: per RoI (RoIAlign excluded), and for the ``MODEL.RPN.POST_NMS_TOPK_TEST``
  proposals that reach it at inference;
- keypoint head: per RoI, i.e. per detected person (RoIAlign excluded).
"""
import argparse
from pathlib import Path

import torch
from torch import nn
from fvcore.nn import FlopCountAnalysis

from detectron2 import model_zoo
from detectron2.config import get_cfg
from detectron2.modeling import build_model

from d2_edwpose import add_edwpose_config
from d2_edwpose.data import register_config_datasets
from d2_edwpose.model_zoo import CONFIG_DIR

PAPER_CONFIGS = [CONFIG_DIR / f"keypoint_rcnn_mv3_fpn_320_{t}.yaml" for t in ("vanilla", "dw", "edw")]
REALTIME_CONFIG = CONFIG_DIR / "keypoint_rcnn_mv3_fpn_320_realtime.yaml"
STOCK_R50 = "COCO-Keypoints/keypoint_rcnn_R_50_FPN_3x.yaml"


def load_config(config_file, fixed_size=(320, 320)):
    cfg = get_cfg()
    add_edwpose_config(cfg)
    cfg.merge_from_file(str(config_file))
    cfg.MODEL.DEVICE = "cpu"
    cfg.MODEL.WEIGHTS = ""
    cfg.INPUT.FIXED_SIZE = fixed_size
    register_config_datasets(cfg)  # NUM_KEYPOINTS -1 takes its datasets' number
    return cfg


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
        "keypoint_head_gflops_per_roi": _flops(_KeypointHeadLayers(heads.keypoint_head), (kp_roi,)) / 1e9,
        "total_params": _params(model),
    }


def format_table(rows):
    header = (
        "| model | backbone params / GFLOPs | RPN params / GFLOPs | box head params / MFLOPs per RoI "
        "(GFLOPs at test proposals) | keypoint head params / GFLOPs per RoI | total params |\n"
        "|---|---|---|---|---|---|\n"
    )
    lines = [
        f"| {r['model']} | {r['backbone_params'] / 1e6:.2f} M / {r['backbone_gflops']:.2f} "
        f"| {r['rpn_params'] / 1e6:.2f} M / {r['rpn_gflops']:.2f} "
        f"| {r['box_head_params'] / 1e6:.2f} M / {r['box_head_mflops_per_roi']:.2f} "
        f"({r['box_head_gflops_at_test']:.1f} at {r['test_proposals']}) "
        f"| {r['keypoint_head_params'] / 1e6:.2f} M / {r['keypoint_head_gflops_per_roi']:.3f} "
        f"| {r['total_params'] / 1e6:.2f} M |"
        for r in rows
    ]
    return header + "\n".join(lines)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("configs", nargs="*", type=Path, default=[*PAPER_CONFIGS, REALTIME_CONFIG])
    parser.add_argument(
        "--stock-r50", action="store_true", help=f"add detectron2's {STOCK_R50} at the same input"
    )
    args = parser.parse_args(argv)
    rows = [analyze(load_config(path), path.stem) for path in args.configs]
    if args.stock_r50:
        cfg = load_config(model_zoo.get_config_file(STOCK_R50))
        rows.append(analyze(cfg, f"detectron2 {Path(STOCK_R50).stem} (at 320x320)"))
    print(format_table(rows))
    return rows


if __name__ == "__main__":
    main()
