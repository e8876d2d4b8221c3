"""Evaluate an exported model (ONNX, float32 or INT8) with detectron2's COCOEvaluator.

    python -m d2_edwpose.tools.evaluate_export --config-file configs/cpu_demo_keypoint_rcnn_mv3_fpn_320_edw.yaml \\
        --model output/export/model_int8.onnx --runtime openvino [--precision bf16] \\
        [--dataset synthetic_keypoints_val]

runs the deployment runner (:class:`~d2_edwpose.deploy.onnx_pose_runner.OnnxPoseRunner`, its
pre- and post-processing included) on every image of the dataset (default: the config's first
``DATASETS.TEST``), as read from disk by OpenCV, and scores its poses as ``train_net.py
--eval-only`` scores the PyTorch model: the same evaluator
(:class:`~d2_edwpose.engine.evaluation.KeypointCOCOEvaluator`), the dataset's OKS sigmas, box and
keypoint AP.
"""

import argparse
import json
import logging
import os

import cv2
import torch

from detectron2.data import DatasetCatalog, MetadataCatalog
from detectron2.structures import Boxes, Instances
from detectron2.utils.logger import setup_logger

from d2_edwpose.data.catalog import check_registered, oks_sigmas
from d2_edwpose.deploy.onnx_pose_runner import PRECISIONS, RUNTIMES, OnnxPoseRunner
from d2_edwpose.engine.evaluation import KeypointCOCOEvaluator
from d2_edwpose.model_zoo import load_config
from d2_edwpose.utils.atomic_files import atomic_open

__all__ = ["evaluate_runner", "main"]

logger = logging.getLogger("d2_edwpose.evaluate_export")


def _instances(poses, image_size):
    instances = Instances(image_size)
    instances.pred_boxes = Boxes(torch.from_numpy(poses["boxes"]))
    instances.scores = torch.from_numpy(poses["scores"])
    instances.pred_classes = torch.from_numpy(poses["classes"]).long()
    instances.pred_keypoints = torch.from_numpy(poses["keypoints"])
    return instances


def evaluate_runner(runner, dataset_name, evaluator):
    """``evaluator``'s results for ``runner``'s poses on every image of ``dataset_name``."""
    names = MetadataCatalog.get(dataset_name).get("keypoint_names")
    if names is not None and len(names) != runner.num_keypoints:
        raise ValueError(
            f"{runner.path} predicts {runner.num_keypoints} keypoints, dataset '{dataset_name}' "
            f"has {len(names)}"
        )
    if (
        runner.keypoint_names is not None
        and names is not None
        and list(names) != list(runner.keypoint_names)
    ):
        raise ValueError(
            f"{runner.path} names its keypoints {runner.keypoint_names}, dataset "
            f"'{dataset_name}' {list(names)}"
        )
    evaluator.reset()
    for record in DatasetCatalog.get(dataset_name):
        image = cv2.imread(record["file_name"])
        if image is None:
            raise ValueError(
                f"Dataset '{dataset_name}': cannot read the image {record['file_name']}"
            )
        instances = _instances(runner(image), image.shape[:2])
        evaluator.process([record], [{"instances": instances}])
    return evaluator.evaluate()


def main(argv=None):
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--config-file", required=True, metavar="FILE", help="the model's config")
    parser.add_argument("--model", required=True, help="an ONNX file of tools.export_model")
    parser.add_argument("--runtime", choices=RUNTIMES, help="default: the first installed")
    parser.add_argument("--precision", choices=PRECISIONS, default="fp32")
    parser.add_argument("--threads", type=int, help="the runtime's intra-op threads")
    parser.add_argument("--dataset", help="a registered dataset; default: DATASETS.TEST[0]")
    parser.add_argument("--output", help="folder for the predictions and results.json")
    parser.add_argument("opts", nargs=argparse.REMAINDER, help="config overrides: KEY VALUE ...")
    args = parser.parse_args(argv)
    setup_logger(name="d2_edwpose")
    setup_logger(name="detectron2")

    cfg = load_config(args.config_file, args.opts)
    if not (args.dataset or cfg.DATASETS.TEST):
        parser.error("--dataset is needed: the config has no DATASETS.TEST")
    dataset_name = args.dataset or cfg.DATASETS.TEST[0]
    check_registered((), (dataset_name,))

    runner = OnnxPoseRunner(
        args.model, num_threads=args.threads, runtime=args.runtime, precision=args.precision
    )
    logger.info(f"{args.model}: {runner.runtime}, {runner.precision}, on {dataset_name}")
    evaluator = KeypointCOCOEvaluator(
        dataset_name,
        distributed=False,
        output_dir=args.output,
        kpt_oks_sigmas=oks_sigmas(cfg, dataset_name),
    )
    results = evaluate_runner(runner, dataset_name, evaluator)
    summary = {
        "model": os.fspath(args.model),
        "runtime": runner.runtime,
        "precision": runner.precision,
        "dataset": dataset_name,
        "results": results,
    }
    print(json.dumps(summary))
    if args.output:
        with atomic_open(os.path.join(args.output, "results.json"), "w") as f:
            json.dump(summary, f, indent=1)
    return summary


if __name__ == "__main__":
    main()
