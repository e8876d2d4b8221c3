"""torchvision's MobileNetV3 weights (such as its ImageNet ones) renamed for the backbone of
``build_mobilenetv3_fpn_backbone``, after checking that they are what they claim to be."""

import functools
from collections.abc import Mapping

import torch

from ...utils.messages import abbreviate_keys
from .mobilenetv3 import ARCHS, MobileNetV3

__all__ = ["MOBILENETV3_PREFIX", "convert_torchvision_mobilenetv3"]

# Where the MobileNetV3 of build_mobilenetv3_fpn_backbone sits in a detectron2 model.
MOBILENETV3_PREFIX = "backbone.bottom_up."

# Keys of torchvision's MobileNetV3 that a detector has no use for: the ImageNet classifier,
# and BatchNorm's update counter (FrozenBN has none; BN only uses it when momentum is None).
_IGNORED_PREFIX = "classifier."
_IGNORED_SUFFIX = ".num_batches_tracked"
# Checkpoint formats that hold the state dict under a key (torchvision's reference scripts
# write {"model": ...}; many others {"state_dict": ...}).
_WRAPPER_KEYS = ("model", "state_dict")


@functools.lru_cache(maxsize=None)
def _mobilenetv3_keys(arch):
    """The state-dict keys of torchvision's ``mobilenet_v3_<arch>`` less the ignored ones."""
    # Our backbone has torchvision's keys by construction; FrozenBN has exactly BatchNorm's
    # keys but num_batches_tracked. The meta device skips allocating and initialising weights.
    with torch.device("meta"):
        return tuple(MobileNetV3(arch, norm="FrozenBN").state_dict())


def _check_mobilenetv3_keys(keys):
    """Raise ValueError, naming the differences, unless ``keys`` are those of an architecture."""
    given = set(keys)
    mismatches = []
    for arch in ARCHS:
        expected = _mobilenetv3_keys(arch)
        expected_set = set(expected)
        missing = [k for k in expected if k not in given]
        unexpected = [k for k in keys if k not in expected_set]
        if not missing and not unexpected:
            return
        mismatches.append((len(missing) + len(unexpected), arch, missing, unexpected))
    _, arch, missing, unexpected = min(mismatches)
    problems = []
    if missing:
        problems.append(f"missing {len(missing)} keys: {abbreviate_keys(missing)}")
    if unexpected:
        problems.append(f"{len(unexpected)} unexpected keys: {abbreviate_keys(unexpected)}")
    raise ValueError(
        f"not a state dict of torchvision's MobileNetV3; compared with the closest, "
        f"mobilenet_v3_{arch}, it has " + "; ".join(problems)
    )


def convert_torchvision_mobilenetv3(state_dict):
    """Rename torchvision MobileNetV3 weights for ``build_mobilenetv3_fpn_backbone``.

    torchvision's ``features.<i>.<...>`` is ``backbone.bottom_up.features.<i>.<...>`` here (see
    :mod:`d2_edwpose.modeling.backbone.mobilenetv3`), BatchNorm running statistics included;
    the classifier and ``num_batches_tracked`` are dropped.

    Args:
        state_dict (Mapping[str, Tensor]): of ``mobilenet_v3_large`` or ``mobilenet_v3_small``
            (any width), such as the published ImageNet .pth files; or a checkpoint holding
            it under "model" or "state_dict".

    Returns:
        dict[str, Tensor]: detectron2 parameter name -> CPU tensor, in torchvision's order.

    Raises:
        ValueError: if the keys are not those of a torchvision MobileNetV3.
    """
    if not isinstance(state_dict, Mapping):
        raise ValueError(f"expected a state dict (a mapping), got a {type(state_dict).__name__}")
    for wrapper_key in _WRAPPER_KEYS:
        if isinstance(state_dict.get(wrapper_key), Mapping):
            state_dict = state_dict[wrapper_key]
            break
    weights = {
        name: value
        for name, value in state_dict.items()
        if not name.startswith(_IGNORED_PREFIX) and not name.endswith(_IGNORED_SUFFIX)
    }
    _check_mobilenetv3_keys(list(weights))
    not_tensors = [name for name, value in weights.items() if not isinstance(value, torch.Tensor)]
    if not_tensors:
        raise ValueError(f"values of {abbreviate_keys(not_tensors)} are not tensors")
    return {MOBILENETV3_PREFIX + name: value.detach().cpu() for name, value in weights.items()}
