"""Poses in image files, as JSON, from an exported pose model:

    python -m d2_edwpose.deploy model.onnx photo.jpg [...] [--runtime openvino|onnxruntime]
        [--precision fp32|bf16] [--score-threshold 0.5] [--threads N] [--output poses.json]

(``python -m FOLDER ...`` for a copy of this folder, e.g. ``python -m pose_runner ...``.)
"""
import argparse
import json
import sys

import cv2

from .onnx_pose_runner import PRECISIONS, RUNTIMES, OnnxPoseRunner


def main(argv=None):
    parser = argparse.ArgumentParser(
        prog=f"python -m {__package__}",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("model", help="ONNX file written by d2_edwpose.tools.export_model")
    parser.add_argument("images", nargs="+", help="image files")
    parser.add_argument("--score-threshold", type=float, help="default: the exported one")
    parser.add_argument("--threads", type=int, help="the runtime's intra-op threads")
    parser.add_argument(
        "--runtime", choices=RUNTIMES, help=f"default: the first installed of {list(RUNTIMES)}"
    )
    parser.add_argument(
        "--precision",
        choices=PRECISIONS,
        default="fp32",
        help="of the float operations; bf16: OpenVINO, on CPUs with AVX-512 BF16 or AMX",
    )
    parser.add_argument("--output", help="JSON file to write (default: standard output)")
    args = parser.parse_args(argv)

    runner = OnnxPoseRunner(
        args.model, num_threads=args.threads, runtime=args.runtime, precision=args.precision
    )
    results = []
    for path in args.images:
        image = cv2.imread(path)
        if image is None:
            raise SystemExit(f"{path}: not a readable image file")
        poses = runner(image, args.score_threshold)
        people = [
            {"box": box.tolist(), "score": float(score), "keypoints": keypoints.tolist()}
            for box, score, keypoints in zip(poses["boxes"], poses["scores"], poses["keypoints"])
        ]
        results.append(
            {"image": path, "height": image.shape[0], "width": image.shape[1],
             "keypoint_names": runner.keypoint_names, "people": people}
        )  # fmt: skip
    text = json.dumps(results)
    if args.output:
        with open(args.output, "w") as f:
            f.write(text + "\n")
    else:
        sys.stdout.write(text + "\n")
    return results


if __name__ == "__main__":
    main()
