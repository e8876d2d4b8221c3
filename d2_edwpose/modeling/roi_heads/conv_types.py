"""The ``CONV_TYPE`` and ``EXPAND_FACTOR`` keys of the heads that choose their convolutions."""

from ...utils.validation import check_config_value
from ..layers import CONV_TYPES, is_valid_expand_factor

__all__ = ["conv_type_arguments"]


def conv_type_arguments(cfg, head):
    """``conv_type`` and ``expand_factor`` of a head from MODEL.<head>.CONV_TYPE / EXPAND_FACTOR
    (``head``: "ROI_KEYPOINT_HEAD" or "ROI_BOX_HEAD"), checked. A bad factor fails whatever the
    type, not only once the type is switched to "edw"."""
    hcfg = cfg.MODEL[head]
    check_config_value(
        f"MODEL.{head}.CONV_TYPE",
        hcfg.CONV_TYPE,
        hcfg.CONV_TYPE in CONV_TYPES,
        ", ".join(map(repr, CONV_TYPES)),
    )
    check_config_value(
        f"MODEL.{head}.EXPAND_FACTOR",
        hcfg.EXPAND_FACTOR,
        is_valid_expand_factor(hcfg.EXPAND_FACTOR),
        "an integer >= 1",
    )
    return {"conv_type": hcfg.CONV_TYPE, "expand_factor": hcfg.EXPAND_FACTOR}
