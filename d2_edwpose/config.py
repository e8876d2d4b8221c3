"""Config keys added by d2_edwpose (the ``add_*_config`` convention of detectron2's projects)."""
from detectron2.config import CfgNode as CN


def add_edwpose_config(cfg):
    """Add d2_edwpose's keys, with their defaults, to a detectron2 config (in place)."""
    # Every image is resized to exactly this (height, width) by the model itself
    # (FixedInputSizeRCNN), so detectron2's loaders and DefaultPredictor all see the same resize;
    # the paper uses 320x320. Set INPUT.MIN_SIZE_TRAIN/TEST to 0 so that detectron2's
    # shortest-edge resize is a no-op and images reach the model at full resolution.
    cfg.INPUT.FIXED_SIZE = (320, 320)

    cfg.MODEL.MOBILENETV3 = CN()
    # "large" or "small": torchvision's mobilenet_v3_large / mobilenet_v3_small.
    cfg.MODEL.MOBILENETV3.ARCH = "large"
    # Channel width multiplier (torchvision's width_mult); ImageNet weights exist for 1.0.
    cfg.MODEL.MOBILENETV3.WIDTH_MULT = 1.0
    # Outputs by stride: stage2 (4), stage3 (8), stage4 (16), stage5 (32, after the last 1x1 conv).
    cfg.MODEL.MOBILENETV3.OUT_FEATURES = ["stage2", "stage3", "stage4", "stage5"]
    # 0: train everything; 1: freeze the stem; k >= 2: the stem and stage2..stage<k>.
    cfg.MODEL.MOBILENETV3.FREEZE_AT = 0
    # Any norm of detectron2's get_norm: "FrozenBN", "BN", "SyncBN", "GN", "" (none).
    cfg.MODEL.MOBILENETV3.NORM = "FrozenBN"

    # Convolutions of the keypoint head's CONV_DIMS stack: "vanilla" (k x k conv, detectron2's
    # stock head), "dw" (depthwise separable) or "edw" (expanded depthwise separable).
    cfg.MODEL.ROI_KEYPOINT_HEAD.CONV_TYPE = "vanilla"
    # EDWConv's e: depthwise filters per input channel. See EDWConv for the choice of default.
    cfg.MODEL.ROI_KEYPOINT_HEAD.EXPAND_FACTOR = 2
