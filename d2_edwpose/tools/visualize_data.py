"""Draw a dataset as training sees it, before a long run: its annotations, or what the training
loader yields (augmentations such as the random flip applied, resized to INPUT.FIXED_SIZE as
the model resizes it), with the dataset's skeleton, left and right in different colours.

    python -m d2_edwpose.tools.visualize_data --config-file CFG --source annotation \\
        --output DIR [--num-images N] [--dataset NAME] [KEY VALUE ...]
    python -m d2_edwpose.tools.visualize_data --config-file CFG --source dataloader --output DIR

detectron2's ``tools/visualize_data.py``, with the keypoints coloured by side: green left,
orange right, blue centre (limbs likewise, by their ends). After a flip, a correct flip map
keeps every person's left side green; a wrong one shows their left limbs in the right colour.
The images go to ``--output``, numbered in the order they are drawn: the annotations as
``NNNN_<dataset>_<image file name>``, the loader's samples as ``NNNN_<image stem>.png``.
"""
import argparse
import logging
import os
from pathlib import Path

import numpy as np
import torch

from detectron2.data import DatasetCatalog, MetadataCatalog
from detectron2.data import detection_utils as utils
from detectron2.utils.logger import setup_logger
from detectron2.utils.visualizer import Visualizer

from d2_edwpose.data.keypoint_names import keypoint_sides
from d2_edwpose.data.keypoint_sets import SIDE_COLORS, side_colored_rules
from d2_edwpose.engine import Trainer, check_datasets
from d2_edwpose.model_zoo import load_config
from d2_edwpose.modeling.meta_arch import resize_sample
from d2_edwpose.utils.atomic_files import atomic_path

__all__ = ["SidedKeypointVisualizer", "main"]

SOURCES = ("annotation", "dataloader")
logger = logging.getLogger("d2_edwpose.visualize_data")


class SidedKeypointVisualizer(Visualizer):
    """detectron2's ``Visualizer``, with keypoints and limbs in the colour of their side
    (:data:`~d2_edwpose.data.keypoint_sets.SIDE_COLORS`), as the metadata's keypoint names
    and flip map give it (:func:`~d2_edwpose.data.keypoint_names.keypoint_sides`), and the
    limbs of its ``keypoint_connection_rules``."""

    def draw_and_connect_keypoints(self, keypoints):
        names = list(self.metadata.get("keypoint_names", ()))
        flip_map = self.metadata.get("keypoint_flip_map", ())
        visible = {
            name: (x, y)
            for name, (x, y, visibility) in zip(names, np.asarray(keypoints))
            if visibility > self.keypoint_threshold
        }
        limbs = [(a, b) for a, b, _ in self.metadata.get("keypoint_connection_rules", ())]
        for a, b, color in side_colored_rules(names, flip_map, limbs):
            if a in visible and b in visible:
                (x0, y0), (x1, y1) = visible[a], visible[b]
                self.draw_line([x0, x1], [y0, y1], color=_rgb(color))
        radius = max(self._default_font_size / 4, 2)
        for name, side in zip(names, keypoint_sides(names, flip_map)):
            if name in visible:
                self.draw_circle(visible[name], color=_rgb(SIDE_COLORS[side]), radius=radius)
        return self.output

    def draw_legend(self):
        """'left' and 'right' in their colours, top left."""
        size = self._default_font_size
        for row, side in enumerate(("left", "right")):
            self.draw_text(
                side,
                (size / 2, size / 2 + row * size * 1.5),
                color=_rgb(SIDE_COLORS[side]),
                horizontal_alignment="left",
            )
        return self.output


def _rgb(color):
    """An (r, g, b) colour of 0-255 values as matplotlib's 0-1 values."""
    return tuple(c / 255 for c in color)


def _write(visualized, path):
    with atomic_path(path) as partial:
        visualized.save(partial)


def draw_annotations(dataset_names, output_dir, num_images):
    """Draw the first ``num_images`` records of the datasets (all if None); returns the files."""
    written = []
    for name in dataset_names:
        metadata = MetadataCatalog.get(name)
        for record in DatasetCatalog.get(name)[:num_images]:
            image = utils.read_image(record["file_name"], "RGB")
            visualizer = SidedKeypointVisualizer(image, metadata)
            visualizer.draw_dataset_dict(record)
            # Numbered, and named by the dataset: images of several folders or datasets may
            # share a file name.
            path = Path(output_dir) / (
                f"{len(written):04d}_{name}_{os.path.basename(record['file_name'])}"
            )
            _write(visualizer.draw_legend(), path)
            written.append(path)
            if num_images is not None and len(written) >= num_images:
                return written
    return written


def draw_loader_samples(cfg, output_dir, num_images):
    """Draw the first ``num_images`` samples of the training loader of ``cfg`` as the model
    trains on them (resized to ``INPUT.FIXED_SIZE``); returns the files."""
    metadata = MetadataCatalog.get(cfg.DATASETS.TRAIN[0])
    loader = Trainer.build_train_loader(cfg)
    written = []
    for batch in loader:
        for sample in batch:
            sample = resize_sample(sample, tuple(cfg.INPUT.FIXED_SIZE))
            image = sample["image"].permute(1, 2, 0).float().round().clamp(0, 255).to(torch.uint8)
            image = utils.convert_image_to_rgb(image.numpy(), cfg.INPUT.FORMAT)
            visualizer = SidedKeypointVisualizer(image, metadata, scale=2.0)
            instances = sample["instances"]
            visualizer.overlay_instances(
                labels=[metadata.thing_classes[i] for i in instances.gt_classes],
                boxes=instances.gt_boxes if instances.has("gt_boxes") else None,
                keypoints=instances.gt_keypoints if instances.has("gt_keypoints") else None,
            )
            stem = Path(sample["file_name"]).stem
            path = Path(output_dir) / f"{len(written):04d}_{stem}.png"
            _write(visualizer.draw_legend(), path)
            written.append(path)
            if len(written) >= num_images:
                return written
    return written


def main(argv=None):
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--config-file", required=True, metavar="FILE")
    parser.add_argument("--source", required=True, choices=SOURCES)
    parser.add_argument("--output", required=True, help="folder for the drawings")
    parser.add_argument(
        "--num-images", type=int, default=20, help="how many images to draw (default: %(default)s)"
    )
    parser.add_argument(
        "--dataset",
        action="append",
        help="a dataset to draw (repeatable; default: DATASETS.TRAIN); with --source "
        "dataloader, the datasets the loader is built on",
    )
    parser.add_argument("opts", nargs=argparse.REMAINDER, help="config overrides: KEY VALUE ...")
    args = parser.parse_args(argv)
    if args.num_images < 1:
        parser.error(f"--num-images {args.num_images}: at least 1")
    setup_logger(name="d2_edwpose")
    cfg = load_config(args.config_file, args.opts)
    if args.dataset:
        cfg.DATASETS.TRAIN = tuple(args.dataset)
    # Only the datasets drawn are checked; one image per batch, in this process.
    cfg.DATASETS.TEST = ()
    cfg.SOLVER.IMS_PER_BATCH = 1
    cfg.DATALOADER.NUM_WORKERS = 0
    cfg.freeze()
    check_datasets(cfg, train=True)
    if args.source == "annotation":
        written = draw_annotations(cfg.DATASETS.TRAIN, args.output, args.num_images)
    else:
        written = draw_loader_samples(cfg, args.output, args.num_images)
    logger.info(f"{len(written)} images drawn in {args.output}")
    return written


if __name__ == "__main__":
    main()
