"""Soak test of inference: many images in a row, resident memory must stop growing.

    python -m d2_edwpose.tools.soak --weights output/cpu_demo/model_final.pth --num-images 1000

Generates (once) ``--num-images`` synthetic images, runs detectron2's ``DefaultPredictor`` on
each of them in turn (reading the file included, as a deployment would), and measures the
process's resident memory (RSS) after ``--warmup`` images and after the last one. Prints the
growth and exits with status 1 if it is ``--max-growth`` percent or more (default 10).
``--config-file`` defaults to the CPU demo config; without ``--weights`` the config's
``MODEL.WEIGHTS`` is used ("" = random weights).
"""
import argparse
import gc
import json
import logging
import os
import sys
import time
from pathlib import Path

import cv2

from detectron2.utils.logger import setup_logger

from d2_edwpose.data.synthetic import generate_synthetic_keypoints
from d2_edwpose.engine import build_predictor
from d2_edwpose.model_zoo import get_config_file, load_config

logger = logging.getLogger("d2_edwpose.soak")

DEFAULT_CONFIG = get_config_file("cpu_demo_keypoint_rcnn_mv3_fpn_320_edw")
MIB = 2**20


def resident_memory():
    """The current resident set size of this process, in bytes (Linux)."""
    with open("/proc/self/statm") as f:
        resident_pages = int(f.read().split()[1])
    return resident_pages * os.sysconf("SC_PAGE_SIZE")


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--config-file", default=DEFAULT_CONFIG)
    parser.add_argument("--weights", help="checkpoint (default: the config's MODEL.WEIGHTS)")
    parser.add_argument("--num-images", type=int, default=1000, help="distinct images in a row")
    parser.add_argument("--warmup", type=int, default=100, help="images before the first reading")
    parser.add_argument("--max-growth", type=float, default=10.0, help="percent: exit 1 at or over")
    parser.add_argument("--data-root", default="output/soak/synthetic", help="synthetic images")
    parser.add_argument("--log-every", type=int, default=100)
    parser.add_argument("opts", nargs=argparse.REMAINDER, help="config overrides: KEY VALUE ...")
    args = parser.parse_args(argv)
    if not 0 < args.warmup < args.num_images:
        parser.error(f"--warmup={args.warmup} must be from 1 to --num-images - 1")
    return args


def main(argv=None):
    args = parse_args(argv)
    setup_logger(name="d2_edwpose")
    cfg = load_config(args.config_file, args.opts)
    if args.weights is not None:
        cfg.MODEL.WEIGHTS = args.weights
    cfg.freeze()
    predictor = build_predictor(cfg)  # before the images: a bad config or weights fail fast

    root = generate_synthetic_keypoints(args.data_root, num_train=0, num_val=args.num_images)
    # The generated split's own file list: the folder may hold more images from an earlier run.
    with open(Path(root, "annotations", "person_keypoints_val.json")) as f:
        images = [Path(root, "val", image["file_name"]) for image in json.load(f)["images"]]

    start = time.perf_counter()
    for count, path in enumerate(images, 1):
        image = cv2.imread(str(path))
        if image is None:
            raise OSError(f"OpenCV cannot read {path}")
        predictor(image)
        if count == args.warmup:
            gc.collect()
            after_warmup = resident_memory()
            warm_start = time.perf_counter()
        if count % args.log_every == 0:
            logger.info(f"{count}/{len(images)} images: RSS {resident_memory() / MIB:.1f} MiB")
    gc.collect()
    end = resident_memory()
    growth = 100.0 * (end - after_warmup) / after_warmup
    summary = {
        "images": len(images),
        "warmup_images": args.warmup,
        "rss_after_warmup_mib": round(after_warmup / MIB, 1),
        "rss_end_mib": round(end / MIB, 1),
        "rss_growth_percent": round(growth, 2),
        "max_growth_percent": args.max_growth,
        "seconds_per_image_after_warmup": round(
            (time.perf_counter() - warm_start) / (len(images) - args.warmup), 4
        ),
        "total_seconds": round(time.perf_counter() - start, 1),
    }
    print(json.dumps(summary))
    if growth >= args.max_growth:
        logger.error(
            f"Resident memory grew by {growth:.2f}% over {len(images) - args.warmup} images "
            f"after warm-up (limit {args.max_growth}%)"
        )
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
