"""Run a trained model on your own images, folders of images or videos, and draw the poses.

    python -m d2_edwpose.tools.demo --config-file configs/keypoint_rcnn_mv3_fpn_320_edw.yaml \
        --input photo.jpg photos/ clip.mp4 --output output/demo MODEL.WEIGHTS model_final.pth

Images are written to ``--output`` under their own names, videos as ``<name>.mp4`` (each
file complete or not at all; never over an input); for a video the frames per second of the
model (detectron2's ``DefaultPredictor``, pre- and post-processing included) are printed.
In videos, people are tracked, and drawn with their track ids, as the deployment runner does
(``d2_edwpose.deploy.tracking`` and ``.drawing``).
"""
import argparse
import logging
import time
from pathlib import Path

import cv2

from detectron2.config import get_cfg
from detectron2.data import MetadataCatalog
from detectron2.data.datasets.builtin_meta import _get_builtin_metadata
from detectron2.utils.logger import setup_logger
from detectron2.utils.visualizer import ColorMode, Visualizer

from d2_edwpose import add_edwpose_config
from d2_edwpose.data import register_config_datasets
from d2_edwpose.data.catalog import num_keypoints
from d2_edwpose.deploy import drawing
from d2_edwpose.deploy.tracking import PoseTracker
from d2_edwpose.engine import build_predictor
from d2_edwpose.modeling.cpu_inference import optimize_for_inference
from d2_edwpose.utils.atomic_files import atomic_path
from d2_edwpose.utils.image_files import IMAGE_SUFFIXES, is_image_file

VIDEO_SUFFIXES = {".mp4", ".avi", ".mov", ".mkv", ".webm", ".m4v"}
logger = logging.getLogger("d2_edwpose.demo")


def setup_cfg(config_file, opts, confidence_threshold):
    cfg = get_cfg()
    add_edwpose_config(cfg)
    cfg.merge_from_file(config_file)
    cfg.merge_from_list(opts)
    cfg.MODEL.ROI_HEADS.SCORE_THRESH_TEST = confidence_threshold
    cfg.freeze()
    register_config_datasets(cfg)
    return cfg


def keypoint_metadata(cfg):
    """The metadata to draw with: that of the config's first dataset with keypoint names (its
    keypoint set and skeleton, as the model was trained on), else COCO's person keypoints.

    Raises ValueError when that keypoint set does not have ``NUM_KEYPOINTS`` keypoints: the
    Visualizer would silently draw keypoints under other names."""
    for name in [*cfg.DATASETS.TEST, *cfg.DATASETS.TRAIN]:
        metadata = MetadataCatalog.get(name)
        if metadata.get("keypoint_names"):
            break
    else:
        name = "COCO's person keypoints"
        metadata = MetadataCatalog.get("__d2_edwpose_demo").set(**_get_builtin_metadata("coco_person"))
    count = num_keypoints(cfg)
    if len(metadata.keypoint_names) != count:
        raise ValueError(
            f"MODEL.ROI_KEYPOINT_HEAD.NUM_KEYPOINTS={count}, but the keypoint set to draw "
            f"with ({name}) has {len(metadata.keypoint_names)}: set DATASETS.TEST to a "
            "registered dataset of the model's keypoint set (d2_edwpose.data.register_keypoint_dataset)"
        )
    return metadata


def collect_inputs(inputs):
    """(images, videos) named by ``inputs``: files, or folders of images (sorted)."""
    images, videos = [], []
    for name in inputs:
        path = Path(name)
        if path.is_dir():
            images.extend(sorted(p for p in path.iterdir() if is_image_file(p)))
        elif not path.is_file():
            raise FileNotFoundError(f"--input {name}: no such file or folder")
        elif path.suffix.lower() in VIDEO_SUFFIXES:
            videos.append(path)
        elif is_image_file(path):
            images.append(path)
        else:
            raise ValueError(
                f"--input {name}: unknown file type '{path.suffix}'; expected an image "
                f"({', '.join(sorted(IMAGE_SUFFIXES))}) or a video ({', '.join(sorted(VIDEO_SUFFIXES))})"
            )
    return images, videos


def output_paths(images, videos, output_dir):
    """Where the drawing of each of ``images`` and ``videos`` goes: ``output_dir`` / its name
    (``<name>.mp4`` for a video). ValueError if one would overwrite an input, or two inputs
    would be drawn to the same file."""
    sources = list(images) + list(videos)
    outputs = [output_dir / p.name for p in images] + [output_dir / f"{p.stem}.mp4" for p in videos]
    inputs = {source.resolve(): source for source in sources}
    drawn_from = {}
    for source, output in zip(sources, outputs):
        target = output.resolve()
        if target in inputs:
            raise ValueError(
                f"--output {output_dir}: the drawing of {source} would overwrite the input "
                f"{inputs[target]}; choose another --output folder"
            )
        if drawn_from.setdefault(target, source.resolve()) != source.resolve():
            raise ValueError(
                f"--input: {inputs[drawn_from[target]]} and {source} would both be drawn to "
                f"{output}; rename one of them"
            )
    return outputs


def draw_poses(image, instances, metadata):
    """``instances`` (boxes, scores, keypoints) drawn on a BGR image with COCO's skeleton."""
    visualizer = Visualizer(image[:, :, ::-1], metadata, instance_mode=ColorMode.IMAGE)
    return visualizer.draw_instance_predictions(instances).get_image()[:, :, ::-1]


def run_on_image(predictor, metadata, path, output):
    """Predict on the image file ``path`` and write the drawing to the file ``output``."""
    image = cv2.imread(str(path))  # BGR, as DefaultPredictor expects by default
    if image is None:
        raise ValueError(f"{path}: not a readable image file")
    start = time.perf_counter()
    instances = predictor(image)["instances"].to("cpu")
    elapsed = time.perf_counter() - start
    with atomic_path(output) as partial:
        if not cv2.imwrite(str(partial), draw_poses(image, instances, metadata)):
            raise OSError(f"{output}: OpenCV could not write this image")
    logger.info(f"{path}: {len(instances)} people in {elapsed * 1000:.0f} ms -> {output}")
    return output


def run_on_video(predictor, metadata, path, output):
    """Predict on every frame of the video file ``path``, track the people, and write the
    drawings (track ids, the dataset's skeleton) to the MPEG-4 file ``output``; returns it and
    the model's frames per second."""
    video = cv2.VideoCapture(str(path))
    if not video.isOpened():
        raise ValueError(f"{path}: OpenCV cannot open this video")
    fps = video.get(cv2.CAP_PROP_FPS) or 30.0
    width = int(video.get(cv2.CAP_PROP_FRAME_WIDTH))
    height = int(video.get(cv2.CAP_PROP_FRAME_HEIGHT))
    tracker = PoseTracker(frame_rate=fps)
    edges = drawing.skeleton_edges(metadata.keypoint_names, metadata.get("keypoint_connection_rules"))
    frames, model_time = 0, 0.0
    with atomic_path(output) as partial:
        fourcc = cv2.VideoWriter_fourcc(*"mp4v")
        writer = cv2.VideoWriter(str(partial), fourcc, fps, (width, height))
        try:
            if not writer.isOpened():
                raise OSError(f"{output}: OpenCV cannot write an MPEG-4 video")
            while True:
                ok, frame = video.read()
                if not ok:
                    break
                start = time.perf_counter()
                instances = predictor(frame)["instances"].to("cpu")
                model_time += time.perf_counter() - start
                poses = tracker.update(
                    {
                        "boxes": instances.pred_boxes.tensor.numpy(),
                        "scores": instances.scores.numpy(),
                        "keypoints": instances.pred_keypoints.numpy(),
                    },
                    timestamp=frames / fps,
                )
                writer.write(drawing.draw_poses(frame, poses, edges, f"{frames / model_time:.1f} FPS"))
                frames += 1
        finally:
            video.release()
            writer.release()
        if frames == 0:
            raise ValueError(f"{path}: no frame could be read")
    model_fps = frames / model_time
    print(f"{path}: {frames} frames, {model_fps:.1f} FPS (model incl. pre/post-processing) -> {output}")
    return output, model_fps


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config-file", required=True, metavar="FILE")
    parser.add_argument("--input", nargs="+", required=True, help="images, folders of images, videos")
    parser.add_argument("--output", default="output/demo", help="folder for the drawn outputs")
    parser.add_argument("--confidence-threshold", type=float, default=0.5)
    parser.add_argument("opts", nargs=argparse.REMAINDER, help="config overrides: KEY VALUE ...")
    args = parser.parse_args(argv)
    setup_logger(name="d2_edwpose")

    images, videos = collect_inputs(args.input)
    output_dir = Path(args.output)
    outputs = output_paths(images, videos, output_dir)
    cfg = setup_cfg(args.config_file, args.opts, args.confidence_threshold)
    predictor = build_predictor(cfg)
    if cfg.TEST.OPTIMIZE_FOR_INFERENCE:
        optimize_for_inference(predictor.model)
    metadata = keypoint_metadata(cfg)
    output_dir.mkdir(parents=True, exist_ok=True)
    written = [
        run_on_image(predictor, metadata, path, output)
        for path, output in zip(images, outputs)
    ]
    written += [
        run_on_video(predictor, metadata, path, output)[0]
        for path, output in zip(videos, outputs[len(images) :])
    ]
    return written


if __name__ == "__main__":
    main()
