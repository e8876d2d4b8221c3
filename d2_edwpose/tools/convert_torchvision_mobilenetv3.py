"""Convert torchvision's MobileNetV3 ImageNet weights into detectron2 weights (.pkl).

    python -m d2_edwpose.tools.convert_torchvision_mobilenetv3 \\
        --download large mobilenet_v3_large.pkl

gets them with torchvision's weights API (``--download small`` for mobilenet_v3_small) into
torch.hub's cache, ``$TORCH_HOME/hub/checkpoints``, checking each file against the sha256
prefix in its name, and converts them. Without network access, download
https://download.pytorch.org/models/mobilenet_v3_large-8738ca79.pth elsewhere and convert
the file:

    python -m d2_edwpose.tools.convert_torchvision_mobilenetv3 \\
        mobilenet_v3_large-8738ca79.pth mobilenet_v3_large.pkl

Then train with ``MODEL.WEIGHTS mobilenet_v3_large.pkl`` and ``MODEL.BACKBONE.NAME
build_mobilenetv3_fpn_backbone``. The weights were trained on RGB images normalised as
torchvision does: set ``INPUT.FORMAT "RGB"``, ``MODEL.PIXEL_MEAN [123.675, 116.28, 103.53]``
and ``MODEL.PIXEL_STD [58.395, 57.12, 57.375]``.

The .pkl holds ``{"model": {name: numpy array}, "__author__": "torchvision",
"matching_heuristics": False}``: detectron2's ``DetectionCheckpointer`` loads a .pkl with an
``__author__`` as is, by exact names, rather than guessing names as for Caffe2 models.
"""
import argparse
import os
import pickle
import sys
import urllib.parse

import torch
from torchvision.models import MobileNet_V3_Large_Weights, MobileNet_V3_Small_Weights

from d2_edwpose.bootstrap_env import sha256_of
from d2_edwpose.modeling.backbone.torchvision_weights import convert_torchvision_mobilenetv3
from d2_edwpose.utils.atomic_files import atomic_open

__all__ = ["main"]

# What --download gets: torchvision's ImageNet weights of mobilenet_v3_<arch>.
_IMAGENET_WEIGHTS = {
    "large": MobileNet_V3_Large_Weights.IMAGENET1K_V1,
    "small": MobileNet_V3_Small_Weights.IMAGENET1K_V1,
}


def _cached_file(url):
    """Where torch.hub's load_state_dict_from_url keeps the download of ``url``."""
    name = os.path.basename(urllib.parse.urlparse(url).path)
    return os.path.join(torch.hub.get_dir(), "checkpoints", name)


def _fail(parser, message):
    sys.exit(f"{parser.prog}: error: {message}")


def _download(parser, weights, output):
    """The state dict of torchvision ``weights``, downloaded unless in torch.hub's cache, and
    the file it was read from. torch.hub checks the sha256 prefix in a file's name only as it
    downloads it: a file already cached is checked here, so that a damaged or truncated one is
    an error rather than loaded or converted."""
    cached = _cached_file(weights.url)
    folder, name = os.path.split(cached)
    if os.path.exists(cached):
        match = torch.hub.HASH_REGEX.search(name)
        digest = sha256_of(cached)
        if match and not digest.startswith(match.group(1)):
            _fail(
                parser,
                f"{cached}: damaged or incomplete (its sha256 {digest} does not start with "
                f"{match.group(1)}, as its name says); delete it so that it is downloaded again",
            )
    try:
        # weights_only: a downloaded file must not run code when unpickled.
        state_dict = weights.get_state_dict(
            progress=True, check_hash=True, map_location="cpu", weights_only=True
        )
    except (OSError, RuntimeError) as e:  # URLError is an OSError; a wrong hash a RuntimeError
        _fail(
            parser,
            f"cannot download {weights.url} ({type(e).__name__}: {e}); download it by hand "
            f"elsewhere and run `{parser.prog} {name} {output}`, or place it in {folder} and "
            "run this command again",
        )
    return cached, state_dict


def _load(parser, path):
    if not os.path.isfile(path):
        _fail(parser, f"{path}: no such file")
    try:
        # weights_only: a downloaded file must not run code when unpickled.
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # torch.load raises many types for a file it cannot read
        _fail(parser, f"{path}: not a PyTorch state dict ({type(e).__name__}: {e})")


def main(argv=None):
    parser = argparse.ArgumentParser(
        prog="python -m d2_edwpose.tools.convert_torchvision_mobilenetv3",
        description="Convert a torchvision mobilenet_v3_large / mobilenet_v3_small state dict "
        "into detectron2 weights for build_mobilenetv3_fpn_backbone.",
    )
    inputs = parser.add_mutually_exclusive_group(required=True)
    inputs.add_argument(
        "--download",
        choices=list(_IMAGENET_WEIGHTS),
        help="get torchvision's ImageNet weights of mobilenet_v3_<arch> (torch.hub caches "
        "them in $TORCH_HOME/hub/checkpoints) and convert them",
    )
    inputs.add_argument(
        "input",
        nargs="?",
        help="torchvision state dict (.pth), e.g. "
        "https://download.pytorch.org/models/mobilenet_v3_large-8738ca79.pth",
    )
    parser.add_argument("output", help="detectron2 weights to write (.pkl)")
    args = parser.parse_args(argv)
    if not args.output.endswith(".pkl"):
        # detectron2's checkpointer reads any other file as a torch checkpoint.
        parser.error(f"OUTPUT must end in .pkl, got {args.output!r}")

    if args.download:
        source, state_dict = _download(parser, _IMAGENET_WEIGHTS[args.download], args.output)
    else:
        source, state_dict = args.input, _load(parser, args.input)
    try:
        weights = convert_torchvision_mobilenetv3(state_dict)
    except ValueError as e:
        _fail(parser, f"{source}: {e}")

    checkpoint = {
        "model": {name: tensor.numpy() for name, tensor in weights.items()},
        "__author__": "torchvision",
        "matching_heuristics": False,
    }
    try:
        with atomic_open(args.output, "wb") as f:
            pickle.dump(checkpoint, f)
    except OSError as e:
        _fail(parser, f"cannot write {args.output}: {e}")
    print(f"Wrote {len(weights)} tensors from {source} to {args.output}")


if __name__ == "__main__":
    main()
