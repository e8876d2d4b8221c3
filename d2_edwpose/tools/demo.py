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
import time
from pathlib import Path

import cv2

from detectron2.utils.logger import setup_logger

from d2_edwpose.data.catalog import keypoint_metadata
from d2_edwpose.deploy import drawing
from d2_edwpose.deploy.tracking import PoseTracker
from d2_edwpose.engine import build_predictor
from d2_edwpose.engine.visualization import predict_and_draw_image
from d2_edwpose.model_zoo import load_config
from d2_edwpose.modeling.cpu_inference import optimize_for_inference
from d2_edwpose.utils.atomic_files import atomic_path
from d2_edwpose.utils.image_files import IMAGE_SUFFIXES, is_image_file

VIDEO_SUFFIXES = {".mp4", ".avi", ".mov", ".mkv", ".webm", ".m4v"}


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
    edges = drawing.skeleton_edges(
        metadata.keypoint_names, metadata.get("keypoint_connection_rules")
    )
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
                writer.write(
                    drawing.draw_poses(frame, poses, edges, f"{frames / model_time:.1f} FPS")
                )
                frames += 1
        finally:
            video.release()
            writer.release()
        if frames == 0:
            raise ValueError(f"{path}: no frame could be read")
    model_fps = frames / model_time
    print(
        f"{path}: {frames} frames, {model_fps:.1f} FPS (model incl. pre/post-processing) -> {output}"
    )
    return output, model_fps


def main(argv=None):
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--config-file", required=True, metavar="FILE")
    parser.add_argument(
        "--input", nargs="+", required=True, help="images, folders of images, videos"
    )
    parser.add_argument("--output", default="output/demo", help="folder for the drawn outputs")
    parser.add_argument("--confidence-threshold", type=float, default=0.5)
    parser.add_argument("opts", nargs=argparse.REMAINDER, help="config overrides: KEY VALUE ...")
    args = parser.parse_args(argv)
    setup_logger(name="d2_edwpose")

    images, videos = collect_inputs(args.input)
    output_dir = Path(args.output)
    outputs = output_paths(images, videos, output_dir)
    cfg = load_config(args.config_file, args.opts)
    cfg.MODEL.ROI_HEADS.SCORE_THRESH_TEST = args.confidence_threshold
    cfg.freeze()
    predictor = build_predictor(cfg)
    if cfg.TEST.OPTIMIZE_FOR_INFERENCE:
        optimize_for_inference(predictor.model)
    metadata = keypoint_metadata(cfg)
    output_dir.mkdir(parents=True, exist_ok=True)
    written = [
        predict_and_draw_image(predictor, metadata, path, output)
        for path, output in zip(images, outputs)
    ]
    written += [
        run_on_video(predictor, metadata, path, output)[0]
        for path, output in zip(videos, outputs[len(images) :])
    ]
    return written


if __name__ == "__main__":
    main()
