"""Config keys added by d2_edwpose (the ``add_*_config`` convention of detectron2's projects).

This module only adds keys, with their defaults and meaning. Each component checks the keys it
reads where it is built (its builder or ``from_config``), so that a model built by detectron2's
``build_model`` or ``DefaultPredictor`` fails with the same errors as one built by the
trainer; the datasets are checked against the model by :func:`d2_edwpose.engine.check_datasets`.
"""
from detectron2.config import CfgNode as CN

__all__ = ["add_edwpose_config"]


def add_edwpose_config(cfg):
    """Add d2_edwpose's keys, with their defaults, to a detectron2 config (in place)."""
    # Every image is resized to exactly this (height, width) by the model itself
    # (FixedInputSizeRCNN), so detectron2's loaders and DefaultPredictor all see the same resize;
    # the paper uses 320x320. Set INPUT.MIN_SIZE_TRAIN/TEST to 0 so that detectron2's
    # shortest-edge resize is a no-op and images reach the model at full resolution.
    cfg.INPUT.FIXED_SIZE = (320, 320)

    # COCO-format keypoint datasets to register (d2_edwpose.data.register_config_datasets), by
    # name: {JSON_FILE, IMAGE_ROOT} and optionally
    #   KEYPOINT_SET: "from_file" (the default: names and skeleton of the file's categories,
    #     flip pairs and OKS sigmas inferred), a known set ("coco_person", "crowdpose",
    #     "ai_challenger", "mpii", "ap10k", "animal_pose", "hand") or a .json file;
    #   FLIP_PAIRS: [[left, right], ...] keypoint names a flip swaps ([] for none), replacing
    #     the keypoint set's or the inferred ones;
    #   OKS_SIGMAS: one per keypoint, replacing the keypoint set's or the default ones;
    #   CATEGORIES: the names of the file's categories to train and evaluate (default: all);
    #   ONE_CLASS: a class name: the (kept) categories train and evaluate as this one class.
    cfg.DATASETS.COCO_KEYPOINTS = CN(new_allowed=True)

    cfg.MODEL.MOBILENETV3 = CN()
    # "large" or "small": torchvision's mobilenet_v3_large / mobilenet_v3_small.
    cfg.MODEL.MOBILENETV3.ARCH = "large"
    # Channel width multiplier (torchvision's width_mult); ImageNet weights exist for 1.0.
    cfg.MODEL.MOBILENETV3.WIDTH_MULT = 1.0
    # Outputs by stride: stage2 (4), stage3 (8), stage4 (16), stage5 (32, after the last 1x1 conv).
    # Freezing is detectron2's MODEL.BACKBONE.FREEZE_AT, as for its ResNet: 0 trains everything,
    # 1 freezes the stem, k >= 2 the stem and stage2..stage<k>.
    cfg.MODEL.MOBILENETV3.OUT_FEATURES = ["stage2", "stage3", "stage4", "stage5"]
    # Any norm of detectron2's get_norm: "FrozenBN", "BN", "SyncBN", "GN", "" (none).
    cfg.MODEL.MOBILENETV3.NORM = "FrozenBN"

    # Convolutions of the keypoint head's CONV_DIMS stack: "vanilla" (k x k conv, detectron2's
    # stock head), "dw" (depthwise separable) or "edw" (expanded depthwise separable).
    cfg.MODEL.ROI_KEYPOINT_HEAD.CONV_TYPE = "vanilla"
    # EDWConv's e: depthwise filters per input channel. 2 is the smallest e that expands
    # anything; the paper does not state its e, but its EDWConv head ran barely slower than its
    # DWConv head, so e is small (docs/model.md). Each unit of e costs a DWConv head's flops.
    cfg.MODEL.ROI_KEYPOINT_HEAD.EXPAND_FACTOR = 2

    # The convs of FastRCNNConfigurableConvFCHead (ROI_BOX_HEAD.NAME), the realtime config's light
    # box head: "dw", "edw" or "vanilla" (then it is detectron2's FastRCNNConvFCHead).
    cfg.MODEL.ROI_BOX_HEAD.CONV_TYPE = "dw"
    cfg.MODEL.ROI_BOX_HEAD.EXPAND_FACTOR = 2

    # Apply d2_edwpose.modeling.cpu_inference.optimize_for_inference (same outputs, faster on
    # CPU) to the model of `train_net.py --eval-only` and of the inference demo. Never to a model
    # that is still being trained: it folds the norms away.
    cfg.TEST.OPTIMIZE_FOR_INFERENCE = False

    # The scan of every image of DATASETS.TRAIN and DATASETS.TEST before the first iteration
    # (d2_edwpose.data.image_scan): each file exists, is an image, and detectron2 reads it at
    # the size its record gives.
    cfg.DATASETS.IMAGE_SCAN = CN()
    cfg.DATASETS.IMAGE_SCAN.ENABLED = True
    # "error": stop before training, listing the bad entries; "drop": train and evaluate
    # without them (one warning). Either way they are all listed in
    # OUTPUT_DIR/image_scan/<datasets>.json.
    cfg.DATASETS.IMAGE_SCAN.BAD_ENTRIES = "error"
    # Decode every image, not only the files that do not end as a JPEG or PNG should: finds
    # damaged pixel data behind an intact header and end, at the cost of decoding them all.
    cfg.DATASETS.IMAGE_SCAN.FULL_DECODE = False
    # Folder of the cache of the scan's findings per image file; "" for
    # $XDG_CACHE_HOME/d2_edwpose/image_scan (~/.cache/d2_edwpose/image_scan).
    cfg.DATASETS.IMAGE_SCAN.CACHE_DIR = ""
