"""Config keys added by d2_edwpose (the ``add_*_config`` convention of detectron2's projects),
and the one place where their values are checked.

:func:`validate_edwpose_config` checks a whole config before anything is built from it; the
builders run the checks of the keys they read (``check_*_config``), so that a model built
without it (detectron2's ``build_model``, ``DefaultPredictor``) fails with the same errors.
"""
import math
from numbers import Real

from detectron2.config import CfgNode as CN
from detectron2.layers import get_norm

from .layers import CONV_TYPES, is_valid_expand_factor

__all__ = [
    "CONV_TYPES",
    "add_edwpose_config",
    "check_fixed_size_config",
    "check_mobilenetv3_config",
    "conv_type_arguments",
    "validate_edwpose_config",
]


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
    # DWConv head (25.0 vs 25.2 FPS), so e is small. On a CPU each unit of e costs a DWConv
    # head's flops again (e = 2: still ~4.4x fewer than the stock 8 x 512 vanilla head).
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


def _check(key, value, valid, expected):
    if not valid:
        raise ValueError(f"{key}={value!r} is invalid: expected {expected}")


def _is_int(value):
    return isinstance(value, int) and not isinstance(value, bool)


def _is_norm(name):
    if name == "":
        return True
    try:
        get_norm(name, 32)
    except KeyError:
        return False
    return True


def check_fixed_size_config(cfg):
    """Check INPUT.FIXED_SIZE, which FixedInputSizeRCNN reads."""
    size = cfg.INPUT.FIXED_SIZE
    _check(
        "INPUT.FIXED_SIZE",
        size,
        len(size) == 2 and all(_is_int(s) and s > 0 for s in size),
        "(height, width), two positive integers",
    )


def check_mobilenetv3_config(cfg, *, fpn=False):
    """Check what the MobileNetV3 backbone builders read: MODEL.MOBILENETV3,
    MODEL.BACKBONE.FREEZE_AT and, with ``fpn``, that MODEL.FPN.IN_FEATURES are outputs."""
    # Imported here: the backbone module imports this one.
    from .modeling.backbone.mobilenetv3 import _OUTPUT_NAMES, _STAGE_NAMES, ARCHS

    mcfg = cfg.MODEL.MOBILENETV3
    _check("MODEL.MOBILENETV3.ARCH", mcfg.ARCH, mcfg.ARCH in ARCHS, " or ".join(map(repr, ARCHS)))
    width = mcfg.WIDTH_MULT
    _check(
        "MODEL.MOBILENETV3.WIDTH_MULT",
        width,
        isinstance(width, Real) and math.isfinite(width) and width > 0,
        "a positive number (1.0 for the ImageNet weights)",
    )
    features = list(mcfg.OUT_FEATURES)
    _check(
        "MODEL.MOBILENETV3.OUT_FEATURES",
        features,
        features and set(features) <= set(_OUTPUT_NAMES) and len(set(features)) == len(features),
        f"a non-empty list of distinct names from {list(_OUTPUT_NAMES)}",
    )
    _check(
        "MODEL.MOBILENETV3.NORM",
        mcfg.NORM,
        _is_norm(mcfg.NORM),
        "a norm of detectron2's get_norm ('FrozenBN', 'BN', 'SyncBN', 'naiveSyncBN', 'GN') or ''",
    )
    freeze_at = cfg.MODEL.BACKBONE.FREEZE_AT
    _check(
        "MODEL.BACKBONE.FREEZE_AT",
        freeze_at,
        _is_int(freeze_at) and 0 <= freeze_at <= len(_STAGE_NAMES),
        f"an integer from 0 (train everything) to {len(_STAGE_NAMES)} (freeze all "
        "MobileNetV3 stages)",
    )
    if fpn:
        in_features = list(cfg.MODEL.FPN.IN_FEATURES)
        _check(
            "MODEL.FPN.IN_FEATURES",
            in_features,
            set(in_features) <= set(features),
            f"outputs of the MobileNetV3, MODEL.MOBILENETV3.OUT_FEATURES={features}",
        )


def _check_conv_type_config(cfg, head):
    hcfg = cfg.MODEL[head]
    _check(
        f"MODEL.{head}.CONV_TYPE",
        hcfg.CONV_TYPE,
        hcfg.CONV_TYPE in CONV_TYPES,
        ", ".join(map(repr, CONV_TYPES)),
    )
    # Whatever the type: a bad factor fails at once, not when the type is switched to "edw".
    _check(
        f"MODEL.{head}.EXPAND_FACTOR",
        hcfg.EXPAND_FACTOR,
        is_valid_expand_factor(hcfg.EXPAND_FACTOR),
        "an integer >= 1",
    )


def conv_type_arguments(cfg, head):
    """``conv_type`` and ``expand_factor`` of a head of :mod:`d2_edwpose.modeling.roi_heads`
    from MODEL.<head>.CONV_TYPE / EXPAND_FACTOR (``head``: "ROI_KEYPOINT_HEAD" or
    "ROI_BOX_HEAD"), checked."""
    _check_conv_type_config(cfg, head)
    return {"conv_type": cfg.MODEL[head].CONV_TYPE, "expand_factor": cfg.MODEL[head].EXPAND_FACTOR}


def validate_edwpose_config(cfg):
    """Raise ValueError naming the key, its value and what is expected, for a bad value of one of
    d2_edwpose's keys, before anything is built from the config.

    yacs already rejects an unknown key (naming it: a KeyError from a file, an AssertionError
    from a command-line override) and a value of another type than the default's (ValueError
    naming the key) when a config is merged.
    """
    # Imported here: the modeling modules import this one.
    from detectron2.modeling.roi_heads.keypoint_head import ROI_KEYPOINT_HEAD_REGISTRY

    from .modeling.backbone.mobilenetv3 import BACKBONE_NAMES
    from .modeling.roi_heads.keypoint_head import KRCNNConfigurableConvDeconvUpsampleHead

    check_fixed_size_config(cfg)
    backbone = cfg.MODEL.BACKBONE.NAME
    if backbone in BACKBONE_NAMES:
        check_mobilenetv3_config(cfg, fpn=backbone == "build_mobilenetv3_fpn_backbone")
    for head in ("ROI_KEYPOINT_HEAD", "ROI_BOX_HEAD"):
        _check_conv_type_config(cfg, head)
    head = cfg.MODEL.ROI_KEYPOINT_HEAD
    reads_conv_type = head.NAME in ROI_KEYPOINT_HEAD_REGISTRY and issubclass(
        ROI_KEYPOINT_HEAD_REGISTRY.get(head.NAME), KRCNNConfigurableConvDeconvUpsampleHead
    )
    if cfg.MODEL.KEYPOINT_ON and not reads_conv_type:
        _check(
            "MODEL.ROI_KEYPOINT_HEAD.CONV_TYPE",
            head.CONV_TYPE,
            head.CONV_TYPE == "vanilla",
            f"'vanilla': ROI_KEYPOINT_HEAD.NAME={head.NAME!r} has no such option (only "
            "'KRCNNConfigurableConvDeconvUpsampleHead' reads it)",
        )
        # -1 ("the datasets' number", d2_edwpose.data.catalog.num_keypoints) is resolved by
        # d2_edwpose's head only.
        _check(
            "MODEL.ROI_KEYPOINT_HEAD.NUM_KEYPOINTS",
            head.NUM_KEYPOINTS,
            head.NUM_KEYPOINTS > 0,
            f"a positive integer: ROI_KEYPOINT_HEAD.NAME={head.NAME!r} does not take -1 (the "
            "datasets' number; only 'KRCNNConfigurableConvDeconvUpsampleHead' does)",
        )
