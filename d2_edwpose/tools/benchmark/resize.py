"""The runner's pre-processing resize against other resizes: speed, and distance from PyTorch's.

    python -m d2_edwpose.tools.benchmark.resize [--sizes 640x480 1280x720 1920x1080] \
        [--images ../shared/data/coco_val2017_mini/val2017] [--repeats 50]

``FixedInputSizeRCNN`` resizes every image to ``INPUT.FIXED_SIZE`` with
``F.interpolate(mode="bilinear", antialias=True)``, and the runner reproduces it
(``OnnxPoseRunner.preprocess``). Each candidate here turns a BGR uint8 frame into the graph's
input, (3, 320, 320) RGB float32, on frames of each size: frames of a synthetic clip of walking
people and, with ``--images``, photos resized to that size. For each it reports the best time
of one call over ``--repeats`` (on one thread, where the library lets it be chosen) and the
largest and mean absolute difference from PyTorch's pixels (values 0-255):

* the runner's resize (numpy, the planes transposed by OpenCV);
* Pillow's bilinear filter, the one PyTorch's antialiasing follows: on the uint8 RGB image
  (fixed-point weights, the pixels rounded to uint8 after each pass) and on float32 planes;
* onnxruntime's ``Resize`` (opset 18, ``antialias=1``, ``exclude_outside=1``: the filter
  stops at the border, as PyTorch's), which an export could carry in its graph, and OpenVINO
  on the same ONNX graph;
* OpenVINO's ``Interpolate-11`` in ``bilinear_pillow`` mode (OpenVINO's pre-processing
  resize, ``ResizeAlgorithm.RESIZE_BILINEAR_PILLOW``), on (1, 3, H, W) float32;
* OpenCV's ``INTER_AREA`` and ``INTER_LINEAR``: other filters (a box, bilinear without
  antialiasing).
"""

import argparse
import glob
import os
import tempfile
import time

import cv2
import numpy as np
import torch

from d2_edwpose.data.synthetic import generate_synthetic_clip
from d2_edwpose.deploy.interpolation import resize_bilinear_antialiased
from d2_edwpose.modeling.meta_arch import resize_to_fixed_size

from .timing import describe_cpu, frame_size

__all__ = ["compare_resizes", "format_resize_table", "resize_candidates"]

SIZE = (320, 320)


def _runner(frame):
    return resize_bilinear_antialiased(np.stack(cv2.split(frame)[::-1]), SIZE)


def _pillow_uint8(frame):
    from PIL import Image

    resized = Image.fromarray(np.ascontiguousarray(frame[:, :, ::-1])).resize(
        SIZE[::-1], Image.BILINEAR
    )
    return np.asarray(resized, dtype=np.float32).transpose(2, 0, 1)


def _pillow_float(frame):
    from PIL import Image

    planes = cv2.split(frame)[::-1]
    return np.stack(
        [
            np.asarray(Image.fromarray(p).convert("F").resize(SIZE[::-1], Image.BILINEAR))
            for p in planes
        ]
    )


def _resize_graph():
    """An ONNX graph of uint8 (3, H, W) planes to the fixed size: ``Resize`` (opset 18) with
    antialiasing, the filter stopping at the border as PyTorch's does (``exclude_outside``)."""
    import onnx
    from onnx import TensorProto, helper

    nodes = [
        helper.make_node("Cast", ["planes"], ["pixels"], to=TensorProto.FLOAT),
        helper.make_node(
            "Resize",
            ["pixels", "", "", "sizes"],
            ["resized"],
            mode="linear",
            antialias=1,
            exclude_outside=1,
            axes=[1, 2],
        ),
    ]
    graph = helper.make_graph(
        nodes,
        "resize",
        [helper.make_tensor_value_info("planes", TensorProto.UINT8, [3, None, None])],
        [helper.make_tensor_value_info("resized", TensorProto.FLOAT, [3, *SIZE])],
        initializer=[helper.make_tensor("sizes", TensorProto.INT64, [2], list(SIZE))],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)])
    onnx.checker.check_model(model)
    return model.SerializeToString()


def _onnxruntime_resize():
    import onnxruntime

    options = onnxruntime.SessionOptions()
    options.intra_op_num_threads = 1
    session = onnxruntime.InferenceSession(
        _resize_graph(), options, providers=["CPUExecutionProvider"]
    )

    def resize(frame):
        return session.run(None, {"planes": np.stack(cv2.split(frame)[::-1])})[0]

    return resize


def _openvino_compiled(model):
    import openvino

    config = {"INFERENCE_PRECISION_HINT": "f32", "INFERENCE_NUM_THREADS": 1}
    return openvino.Core().compile_model(model, "CPU", config).create_infer_request()


def _openvino_onnx_resize():
    import openvino

    request = _openvino_compiled(openvino.Core().read_model(_resize_graph(), b""))

    def resize(frame):
        return request.infer({0: np.stack(cv2.split(frame)[::-1])})[0]

    return resize


def _openvino_interpolate():
    import openvino
    import openvino.opset11 as ops

    pixels = ops.parameter([1, 3, -1, -1], openvino.Type.f32)
    resized = ops.interpolate(
        pixels,
        ops.constant(np.array(SIZE, np.int64)),
        "bilinear_pillow",
        "sizes",
        axes=ops.constant(np.array([2, 3], np.int64)),
    )
    request = _openvino_compiled(openvino.Model([resized], [pixels]))

    def resize(frame):
        planes = np.stack(cv2.split(frame)[::-1])[None].astype(np.float32)
        return request.infer({0: planes})[0][0]

    return resize


def _opencv(interpolation):
    def resize(frame):
        resized = cv2.resize(frame, SIZE[::-1], interpolation=interpolation)
        return np.stack(cv2.split(resized)[::-1]).astype(np.float32)

    return resize


def resize_candidates():
    """{name: BGR uint8 frame -> (3, 320, 320) RGB float32} of the installed libraries."""
    candidates = {
        "runner (numpy, OpenCV transposes)": _runner,
        "Pillow BILINEAR, uint8 RGB": _pillow_uint8,
        "Pillow BILINEAR, float32 planes": _pillow_float,
    }
    try:
        candidates["onnxruntime Resize, antialias"] = _onnxruntime_resize()
    except ImportError:
        pass
    try:
        candidates["OpenVINO, the same ONNX Resize"] = _openvino_onnx_resize()
        candidates["OpenVINO Interpolate, bilinear_pillow"] = _openvino_interpolate()
    except ImportError:
        pass
    candidates["cv2.resize INTER_AREA"] = _opencv(cv2.INTER_AREA)
    candidates["cv2.resize INTER_LINEAR"] = _opencv(cv2.INTER_LINEAR)
    return candidates


def _frames(width, height, images, folder):
    """Frames of a synthetic clip of walking people, and the ``images`` resized, at WxH."""
    clip, _ = generate_synthetic_clip(
        os.path.join(folder, f"walkers_{width}x{height}.mp4"), 30, width, height, num_people=4
    )
    capture = cv2.VideoCapture(str(clip))
    frames = []
    for index in range(30):
        ok, frame = capture.read()
        if ok and index % 10 == 5:
            frames.append(frame)
    capture.release()
    for path in images:
        frames.append(cv2.resize(cv2.imread(path), (width, height), interpolation=cv2.INTER_CUBIC))
    return frames


def compare_resizes(sizes, images=(), repeats=50, candidates=None):
    """Rows of the table: for each (width, height) of ``sizes`` and each candidate, ``ms`` (the
    best of ``repeats`` calls, the candidates taking turns) and ``max_error``/``mean_error``
    from PyTorch's pixels over all frames."""
    candidates = candidates or resize_candidates()
    rows = []
    with tempfile.TemporaryDirectory() as folder:
        for width, height in sizes:
            frames = _frames(width, height, images, folder)
            expected = [
                resize_to_fixed_size(torch.as_tensor(np.stack(cv2.split(f)[::-1])), SIZE).numpy()
                for f in frames
            ]
            best = dict.fromkeys(candidates, float("inf"))
            for _ in range(repeats):
                for name, resize in candidates.items():
                    start = time.perf_counter()
                    resize(frames[0])
                    best[name] = min(best[name], time.perf_counter() - start)
            for name, resize in candidates.items():
                errors = [np.abs(resize(f) - e) for f, e in zip(frames, expected)]
                rows.append(
                    {
                        "size": f"{width}×{height}",
                        "frames": len(frames),
                        "candidate": name,
                        "ms": 1000 * best[name],
                        "max_error": max(e.max() for e in errors),
                        "mean_error": float(np.mean([e.mean() for e in errors])),
                    }
                )
    return rows


def format_resize_table(rows, repeats):
    lines = [
        f"Frame (BGR uint8) -> (3, 320, 320) RGB float32, best of {repeats} calls, "
        f"{describe_cpu()}; difference from F.interpolate(antialias=True), 0-255.",
        "",
        "| frame | frames | resize | ms | max difference | mean difference |",
        "|---|---|---|---|---|---|",
    ]
    for r in rows:
        lines.append(
            f"| {r['size']} | {r['frames']} | {r['candidate']} | {r['ms']:.2f} | "
            f"{r['max_error']:.1e} | {r['mean_error']:.1e} |"
        )
    return "\n".join(lines)


CAMERA_SIZES = [(640, 480), (1280, 720), (1920, 1080)]


def main(argv=None):
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--sizes", nargs="+", type=frame_size, default=CAMERA_SIZES, metavar="WxH",
        help="frame sizes (default: a webcam's, HD, full HD)",
    )  # fmt: skip
    parser.add_argument("--images", help="a folder of photos (*.jpg) to resize too")
    parser.add_argument("--repeats", type=int, default=50)
    args = parser.parse_args(argv)
    torch.set_num_threads(1)  # PyTorch's pixels only: the reference, not timed
    images = sorted(glob.glob(os.path.join(args.images, "*.jpg"))) if args.images else []
    if args.images and not images:
        parser.error(f"--images {args.images}: no *.jpg there")
    rows = compare_resizes(args.sizes, images, args.repeats)
    print(format_resize_table(rows, args.repeats))
    return rows


if __name__ == "__main__":
    main()
