"""Convert torchvision's MobileNetV3 ImageNet weights into detectron2 weights (.pkl).

    python -m d2_edwpose.tools.convert_torchvision_mobilenetv3 \\
        mobilenet_v3_large-8738ca79.pth mobilenet_v3_large.pkl

and train with ``MODEL.WEIGHTS mobilenet_v3_large.pkl`` and ``MODEL.BACKBONE.NAME
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

import torch

from d2_edwpose.checkpoint import atomic_open, convert_torchvision_mobilenetv3

__all__ = ["main"]


def main(argv=None):
    parser = argparse.ArgumentParser(
        prog="python -m d2_edwpose.tools.convert_torchvision_mobilenetv3",
        description="Convert a torchvision mobilenet_v3_large / mobilenet_v3_small state dict "
        "into detectron2 weights for build_mobilenetv3_fpn_backbone.",
    )
    parser.add_argument(
        "input",
        help="torchvision state dict (.pth), e.g. "
        "https://download.pytorch.org/models/mobilenet_v3_large-8738ca79.pth",
    )
    parser.add_argument("output", help="detectron2 weights to write (.pkl)")
    args = parser.parse_args(argv)
    if not args.output.endswith(".pkl"):
        # detectron2's checkpointer reads any other file as a torch checkpoint.
        parser.error(f"OUTPUT must end in .pkl, got {args.output!r}")

    def fail(message):
        sys.exit(f"{parser.prog}: error: {message}")

    if not os.path.isfile(args.input):
        fail(f"{args.input}: no such file")
    try:
        # weights_only: a downloaded file must not run code when unpickled.
        state_dict = torch.load(args.input, map_location="cpu", weights_only=True)
    except Exception as e:  # torch.load raises many types for a file it cannot read
        fail(f"{args.input}: not a PyTorch state dict ({type(e).__name__}: {e})")
    try:
        weights = convert_torchvision_mobilenetv3(state_dict)
    except ValueError as e:
        fail(f"{args.input}: {e}")

    checkpoint = {
        "model": {name: tensor.numpy() for name, tensor in weights.items()},
        "__author__": "torchvision",
        "matching_heuristics": False,
    }
    try:
        with atomic_open(args.output, "wb") as f:
            pickle.dump(checkpoint, f)
    except OSError as e:
        fail(f"cannot write {args.output}: {e}")
    print(f"Wrote {len(weights)} tensors from {args.input} to {args.output}")


if __name__ == "__main__":
    main()
