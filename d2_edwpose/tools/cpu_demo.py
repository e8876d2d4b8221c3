"""The offline CPU demo (``make demo``): synthetic data -> training -> COCO evaluation -> pictures.

    python -m d2_edwpose.tools.cpu_demo [--output-dir output/cpu_demo] [KEY VALUE ...]

1. generates the synthetic person-keypoint dataset (skipped when already there),
2. trains the EDWConv model from scratch with the CPU demo config
   (configs/cpu_demo_keypoint_rcnn_mv3_fpn_320_edw.yaml -- a demo config, not the paper's),
3. evaluates it on ``synthetic_keypoints_val`` with detectron2's COCOEvaluator (keypoint and box
   AP/AR, and detectron2's inference timer),
4. draws predicted poses on held-out val images with detectron2's Visualizer, and plots the
   training loss from metrics.json.
"""
import argparse
import json
import logging
import time
from pathlib import Path

import torch
from matplotlib.figure import Figure

from detectron2.data import DatasetCatalog, MetadataCatalog
from detectron2.utils.file_io import PathManager
from detectron2.utils.logger import setup_logger

from d2_edwpose.data.synthetic import (
    default_root,
    generate_synthetic_keypoints,
    register_synthetic_keypoints,
)
from d2_edwpose.engine import Trainer, build_predictor
from d2_edwpose.engine.visualization import predict_and_draw_image
from d2_edwpose.model_zoo import get_config_file, load_config

DEMO_CONFIG = get_config_file("cpu_demo_keypoint_rcnn_mv3_fpn_320_edw")
logger = logging.getLogger("d2_edwpose.cpu_demo")


def parse_args(argv=None):
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--config-file", default=DEMO_CONFIG)
    parser.add_argument("--output-dir", default="output/cpu_demo")
    parser.add_argument("--num-train", type=int, default=800, help="synthetic training images")
    parser.add_argument("--num-val", type=int, default=100, help="synthetic validation images")
    parser.add_argument("--seed", type=int, default=0, help="seed of the synthetic data")
    parser.add_argument("--num-pictures", type=int, default=8, help="val images to draw")
    parser.add_argument("opts", nargs=argparse.REMAINDER, help="config overrides: KEY VALUE ...")
    return parser.parse_args(argv)


def plot_training_loss(metrics_file, output_file, skip_bytes=0):
    """Plot the loss curves detectron2 wrote to metrics.json, from byte ``skip_bytes`` on:
    detectron2 appends to the file, which may hold earlier runs."""
    with PathManager.open(metrics_file) as f:
        f.seek(skip_bytes)
        records = [json.loads(line) for line in f if '"total_loss"' in line]
    # A Figure of its own, without pyplot: no GUI backend, no global figure state.
    fig = Figure(figsize=(7, 4))
    ax = fig.subplots()
    for key in ("total_loss", "loss_keypoint", "loss_cls", "loss_box_reg", "loss_rpn_cls"):
        ax.plot([r["iteration"] for r in records], [r[key] for r in records], label=key)
    ax.set_xlabel("iteration")
    ax.set_ylabel("loss (median of the logging window)")
    ax.set_yscale("log")
    ax.grid(alpha=0.3)
    ax.legend()
    ax.set_title("CPU demo: EDWConv Keypoint R-CNN, MobileNetV3-FPN, from scratch")
    fig.tight_layout()
    fig.savefig(output_file, dpi=100)


def draw_predictions(cfg, dataset_name, output_dir, count):
    """Predicted poses (score >= 0.5) on the first ``count`` images of ``dataset_name``, as PNG."""
    cfg = cfg.clone()
    cfg.MODEL.ROI_HEADS.SCORE_THRESH_TEST = 0.5
    predictor = build_predictor(cfg)
    metadata = MetadataCatalog.get(dataset_name)
    output_dir.mkdir(parents=True, exist_ok=True)
    paths = [Path(record["file_name"]) for record in DatasetCatalog.get(dataset_name)[:count]]
    return [
        predict_and_draw_image(predictor, metadata, path, output_dir / f"{path.stem}.png")
        for path in paths
    ]


def main(argv=None):
    args = parse_args(argv)
    start = time.perf_counter()
    output_dir = Path(args.output_dir)
    output_dir.mkdir(parents=True, exist_ok=True)
    setup_logger(output=str(output_dir / "log.txt"))
    setup_logger(output=str(output_dir / "log.txt"), name="d2_edwpose")

    data_root = default_root()
    generate_synthetic_keypoints(data_root, args.num_train, args.num_val, args.seed)
    register_synthetic_keypoints(data_root)  # a no-op unless the root changed since import
    logger.info(f"Synthetic data in {data_root} ({time.perf_counter() - start:.0f} s)")

    cfg = load_config(args.config_file, ["OUTPUT_DIR", str(output_dir), *args.opts])
    if cfg.OUTPUT_DIR != str(output_dir):
        raise ValueError(
            f"OUTPUT_DIR={cfg.OUTPUT_DIR!r}: the demo writes to --output-dir ({output_dir}); "
            "set that instead"
        )
    if len(cfg.DATASETS.TEST) != 1:
        raise ValueError(f"DATASETS.TEST={cfg.DATASETS.TEST!r}: the demo evaluates one dataset")
    cfg.freeze()
    with open(output_dir / "config.yaml", "w") as f:
        f.write(cfg.dump())

    metrics_file = output_dir / "metrics.json"
    earlier_metrics = metrics_file.stat().st_size if metrics_file.exists() else 0
    trainer = Trainer(cfg)
    trainer.resume_or_load(resume=False)
    trainer.train()  # ends with COCO evaluation on cfg.DATASETS.TEST (detectron2's EvalHook)
    # EvalHook puts the flattened results into the event storage ("keypoints/AP", ...).
    results = {name: value for name, (value, _) in trainer.storage.latest().items()}
    metrics = ("keypoints/AP", "keypoints/AP50", "keypoints/AP75", "bbox/AP")
    if not all(name in results for name in metrics):
        # detectron2's COCOEvaluator returns nothing for a model that detects nobody.
        logger.warning(f"No COCO results for {cfg.DATASETS.TEST[0]}: the model detected nobody")
        results = {name: float("nan") for name in metrics}

    plot_training_loss(metrics_file, output_dir / "training_loss.png", earlier_metrics)
    cfg = cfg.clone()
    cfg.defrost()
    cfg.MODEL.WEIGHTS = str(output_dir / "model_final.pth")
    pictures = draw_predictions(
        cfg, cfg.DATASETS.TEST[0], output_dir / "predictions", args.num_pictures
    )

    elapsed = time.perf_counter() - start
    summary = {
        "keypoint_AP": results["keypoints/AP"],
        "keypoint_AP50": results["keypoints/AP50"],
        "keypoint_AP75": results["keypoints/AP75"],
        "box_AP": results["bbox/AP"],
        "iterations": cfg.SOLVER.MAX_ITER,
        "wall_time_s": round(elapsed, 1),
        "torch_threads": torch.get_num_threads(),
    }
    with open(output_dir / "summary.json", "w") as f:
        json.dump(summary, f, indent=2)
    logger.info(
        "CPU demo finished in {:.1f} min: keypoint AP {:.1f} (AP50 {:.1f}, AP75 {:.1f}), box AP {:.1f} "
        "on {}.\nLoss plot: {}\nPictures: {} ...".format(
            elapsed / 60,
            summary["keypoint_AP"],
            summary["keypoint_AP50"],
            summary["keypoint_AP75"],
            summary["box_AP"],
            cfg.DATASETS.TEST[0],
            output_dir / "training_loss.png",
            pictures[0] if pictures else "(none)",
        )
    )
    return summary


if __name__ == "__main__":
    main()
