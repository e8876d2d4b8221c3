"""Export a model to ONNX (for onnxruntime) and TorchScript, and check the exports against PyTorch.

    python -m d2_edwpose.tools.export_model --config-file configs/cpu_demo_keypoint_rcnn_mv3_fpn_320_edw.yaml \
        --output output/export --verify datasets/synthetic_keypoints/val \
        MODEL.WEIGHTS output/cpu_demo/model_final.pth

writes ``OUTPUT/model.onnx`` (run it with ``python -m d2_edwpose.deploy``, docs/deploy.md) and
``OUTPUT/model.ts`` (``torch.jit.load``), with the keypoint names of the config's dataset.
The export runs on the CPU, with the config's score threshold, NMS and
``TEST.DETECTIONS_PER_IMAGE`` built in: override them like any key, e.g.
``MODEL.ROI_HEADS.SCORE_THRESH_TEST 0.5``.

``--quantize int8`` also writes ``OUTPUT/model_int8.onnx``, quantized after training and
calibrated on ``--calibration DIR`` (default: the images of the config's first training set)
for OpenVINO's int8 kernels (:mod:`d2_edwpose.export.quantization`); ``tools.evaluate_export``
measures what it costs in accuracy.

``--verify IMAGES`` (an image or a folder of images; repeatable) runs PyTorch and the exports
on the images and prints the largest differences; it fails when the ONNX runner finds other
people than PyTorch, or boxes or keypoints more than 1 px or scores more than 1e-3 away.
"""
import argparse
import json
import logging
from pathlib import Path

import cv2

from detectron2.data import MetadataCatalog
from detectron2.modeling import build_model
from detectron2.utils.logger import setup_logger

from d2_edwpose.data.catalog import keypoint_metadata
from d2_edwpose.deploy.onnx_pose_runner import OnnxPoseRunner
from d2_edwpose.engine.checkpoint import AtomicValidatingCheckpointer
from d2_edwpose.export import (
    compare_torchscript_with_pytorch,
    compare_with_pytorch,
    export_onnx,
    export_torchscript,
    load_torchscript,
)
from d2_edwpose.export.quantization import calibration_images, quantize_int8
from d2_edwpose.model_zoo import load_config
from d2_edwpose.utils.image_files import IMAGE_SUFFIXES, is_image_file

__all__ = ["main"]

FILE_NAMES = {"onnx": "model.onnx", "torchscript": "model.ts", "onnx_int8": "model_int8.onnx"}
EXPORT_FORMATS = ("onnx", "torchscript")
# The parity the exports are held to: pixels (of the image for ONNX, of the fixed-size input
# for TorchScript) and scores.
MAX_PX_DIFFERENCE = 1.0
MAX_SCORE_DIFFERENCE = 1e-3
logger = logging.getLogger("d2_edwpose.export")


def _read_images(paths):
    """The BGR images of image files and folders of images (sorted), as OpenCV reads them."""
    files = []
    for path in map(Path, paths):
        if path.is_dir():
            files.extend(sorted(p for p in path.iterdir() if is_image_file(p)))
        elif path.is_file():
            files.append(path)
        else:
            raise FileNotFoundError(f"--verify {path}: no such file or folder")
    if not files:
        raise FileNotFoundError(
            f"--verify {' '.join(map(str, paths))}: no image files ({', '.join(sorted(IMAGE_SUFFIXES))})"
        )
    images = []
    for path in files:
        image = cv2.imread(str(path))
        if image is None:
            raise ValueError(f"--verify {path}: not a readable image file")
        images.append(image)
    return images


def _training_images(cfg):
    """The image folder of the config's first training set, to calibrate INT8 on."""
    if not cfg.DATASETS.TRAIN:
        raise ValueError(
            "--quantize int8: give --calibration DIR (the config has no DATASETS.TRAIN)"
        )
    name = cfg.DATASETS.TRAIN[0]
    folder = MetadataCatalog.get(name).get("image_root")
    if folder is None:
        raise ValueError(
            f"--quantize int8: dataset '{name}' has no image_root; give --calibration DIR"
        )
    return folder


def _failures(name, stats, limits):
    failures = [f"{key}={stats[key]:g} > {limit:g}" for key, limit in limits if stats[key] > limit]
    if stats["count_mismatches"]:
        failures.append(f"other people found in {stats['count_mismatches']} images")
    return [f"{name}: {failure}" for failure in failures]


def verify(model, written, images):
    """(report, failures): the differences between PyTorch and each export on ``images``, and
    which of them exceed the tolerances."""
    report, failures = {}, []
    if "onnx" in written:
        report["onnx"] = compare_with_pytorch(model, OnnxPoseRunner(written["onnx"]), images)
        limits = [
            ("box_px", MAX_PX_DIFFERENCE),
            ("keypoint_px", MAX_PX_DIFFERENCE),
            ("score", MAX_SCORE_DIFFERENCE),
            ("keypoint_score", MAX_SCORE_DIFFERENCE),
        ]
        failures += _failures(written["onnx"], report["onnx"], limits)
    if "torchscript" in written:
        module, _ = load_torchscript(written["torchscript"])
        report["torchscript"] = compare_torchscript_with_pytorch(model, module, images)
        limits = [
            ("boxes", MAX_PX_DIFFERENCE),
            ("keypoints", MAX_PX_DIFFERENCE),
            ("scores", MAX_SCORE_DIFFERENCE),
        ]
        failures += _failures(written["torchscript"], report["torchscript"], limits)
    return report, failures


def main(argv=None):
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--config-file", required=True, metavar="FILE")
    parser.add_argument("--output", required=True, help="folder for model.onnx / model.ts")
    parser.add_argument(
        "--format",
        action="append",
        choices=EXPORT_FORMATS,
        help="onnx or torchscript (repeatable; default: both)",
    )
    parser.add_argument(
        "--verify",
        action="append",
        metavar="IMAGES",
        help="an image or a folder of images to compare on (repeatable)",
    )
    parser.add_argument(
        "--quantize",
        choices=["int8"],
        help="also write OUTPUT/model_int8.onnx, quantized after training (d2_edwpose.export.quantization)",
    )
    parser.add_argument(
        "--calibration",
        metavar="DIR",
        help="images to calibrate the INT8 model on; default: the image folder of the config's "
        "first DATASETS.TRAIN (not the images it is evaluated on)",
    )
    parser.add_argument(
        "--calibration-images",
        type=int,
        default=300,
        metavar="N",
        help="calibrate on the first N images of --calibration (sorted by name; default 300)",
    )
    parser.add_argument("opts", nargs=argparse.REMAINDER, help="config overrides: KEY VALUE ...")
    args = parser.parse_args(argv)
    setup_logger(name="d2_edwpose")
    setup_logger(name="detectron2")

    images = _read_images(args.verify) if args.verify else []
    cfg = load_config(args.config_file, args.opts)
    # A trace records the device of its tensors; deployment targets are CPUs.
    cfg.MODEL.DEVICE = "cpu"
    cfg.freeze()
    calibration = []
    if args.quantize:
        if args.calibration_images < 1:
            parser.error(f"--calibration-images {args.calibration_images}: at least 1")
        folder = args.calibration or _training_images(cfg)
        calibration = calibration_images(folder, args.calibration_images)
        if args.format and "onnx" not in args.format:
            parser.error("--quantize int8 quantizes the ONNX export: add --format onnx")
    model = build_model(cfg).eval()
    if not cfg.MODEL.WEIGHTS:
        logger.warning("MODEL.WEIGHTS is empty: exporting randomly initialised weights")
    # Missing or foreign weights are an error naming MODEL.WEIGHTS, as in train_net.py.
    AtomicValidatingCheckpointer(model).resume_or_load(cfg.MODEL.WEIGHTS, resume=False)

    exporters = {"onnx": export_onnx, "torchscript": export_torchscript}
    metadata = keypoint_metadata(cfg)
    written = {}
    for name in args.format or EXPORT_FORMATS:
        written[name] = exporters[name](
            model, Path(args.output) / FILE_NAMES[name], keypoint_metadata=metadata
        )
        logger.info(f"wrote {written[name]}")
    if calibration:
        written["onnx_int8"] = quantize_int8(
            written["onnx"], Path(args.output) / FILE_NAMES["onnx_int8"], calibration
        )
        logger.info(f"wrote {written['onnx_int8']} (calibrated on {len(calibration)} images)")
    if images:
        report, failures = verify(model, written, images)
        print(json.dumps(report, indent=1))
        if failures:
            raise RuntimeError(f"the exports do not match PyTorch: {'; '.join(failures)}")
    return written


if __name__ == "__main__":
    main()
