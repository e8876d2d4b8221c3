"""Convert keypoint datasets between Ultralytics' YOLO-pose format and COCO keypoint files.

    # YOLO-pose -> COCO: OUT/train.json, OUT/val.json (and OUT/test.json); prints the config
    # entries that train on them
    python -m d2_edwpose.tools.convert_dataset --from yolo-pose DATA.yaml OUT/
    # COCO -> YOLO-pose: OUT/data.yaml, OUT/labels/<split>/, OUT/images/<split>/ (links)
    python -m d2_edwpose.tools.convert_dataset --from coco \\
        --split train train.json images/ --split val val.json images/ OUT/

The COCO files carry the keypoint names (``kpt_names``) and the flip pairs (``flip_idx``) in
their categories, so a dataset declared with JSON_FILE and IMAGE_ROOT alone trains on them
(d2_edwpose/data/yolo_pose.py describes both formats).
"""
import argparse
import json
import logging
from pathlib import Path

from d2_edwpose.data.yolo_pose import coco_to_yolo_pose, yolo_pose_to_coco

__all__ = ["main"]

FORMATS = ("yolo-pose", "coco")


def config_entries(written, image_root, prefix):
    """The DATASETS keys (a YAML fragment) that declare the converted splits."""
    names = {split: f"{prefix}_{split}" for split in written}
    lines = ["DATASETS:", "  COCO_KEYPOINTS:"]
    for split, path in written.items():
        entry = {"JSON_FILE": str(Path(path).resolve()), "IMAGE_ROOT": str(image_root)}
        lines.append(f"    {names[split]}: {json.dumps(entry)}")
    if "train" in names:
        lines.append(f'  TRAIN: ("{names["train"]}",)')
    test = names.get("val", names.get("test"))
    if test:
        lines.append(f'  TEST: ("{test}",)')
    return "\n".join(lines)


def main(argv=None):
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--from", dest="source", required=True, choices=FORMATS)
    parser.add_argument(
        "--split",
        nargs=3,
        action="append",
        metavar=("NAME", "JSON", "IMAGE_ROOT"),
        help="with --from coco: a split (train, val, test), its COCO file and image folder "
        "(repeatable)",
    )
    parser.add_argument(
        "--name",
        default="converted",
        help="prefix of the dataset names printed (default: %(default)s)",
    )
    parser.add_argument(
        "paths",
        nargs="+",
        metavar="PATH",
        help="--from yolo-pose: DATA.yaml OUT/; --from coco: OUT/",
    )
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    if args.source == "yolo-pose":
        if len(args.paths) != 2 or args.split:
            parser.error("--from yolo-pose takes DATA.yaml OUT/ (and no --split)")
        written, image_root = yolo_pose_to_coco(*args.paths)
        print(config_entries(written, image_root, args.name))
        return written
    if len(args.paths) != 1 or not args.split:
        parser.error("--from coco takes --split NAME JSON IMAGE_ROOT (repeatable) and OUT/")
    splits = {name: (json_file, image_root) for name, json_file, image_root in args.split}
    if len(splits) != len(args.split):
        parser.error("--split: each split name once")
    path = coco_to_yolo_pose(splits, args.paths[0])
    print(path)
    return path


if __name__ == "__main__":
    main()
