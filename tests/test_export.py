"""ONNX and TorchScript exports, and the runner on onnxruntime and OpenVINO, against the PyTorch
model."""
import copy
import json
import shutil
import subprocess
import sys
from pathlib import Path

import cv2
import numpy as np
import onnx
import pytest
import torch

from detectron2.checkpoint import DetectionCheckpointer
from detectron2.modeling import build_model
from detectron2.structures.keypoints import (
    heatmaps_to_keypoints as detectron2_heatmaps_to_keypoints,
)

from d2_edwpose.deploy import interpolation, onnx_pose_runner, runtimes
from d2_edwpose.deploy.onnx_pose_runner import (
    ExportedModelError,
    OnnxPoseRunner,
    heatmaps_to_keypoints,
    resize_bilinear_antialiased,
)
from d2_edwpose.data.synthetic import generate_synthetic_keypoints
from d2_edwpose.export import (
    compare_torchscript_with_pytorch,
    compare_with_pytorch,
    export_onnx,
    export_torchscript,
    load_torchscript,
)
from d2_edwpose.modeling.analysis import analysis_config
from d2_edwpose.modeling.cpu_inference import optimize_for_inference
from d2_edwpose.modeling.layers import EDWConv
from d2_edwpose.modeling.meta_arch import resize_to_fixed_size
from d2_edwpose.tools import export_model
from d2_edwpose.tools.benchmark import (
    build_benchmark_model,
    fix_num_detections,
    profile_runner,
    runner_call,
    time_interleaved,
)

from conftest import REPO_ROOT

CONFIG = REPO_ROOT / "configs" / "cpu_demo_keypoint_rcnn_mv3_fpn_320_edw.yaml"
DEMO_WEIGHTS = REPO_ROOT / "output" / "cpu_demo" / "model_final.pth"
SCORE_THRESHOLD = 0.5
# The parity the exports are held to: 1 px in the original image (boxes, keypoints), 1e-3 in
# scores (boxes and keypoints).
MAX_PX, MAX_SCORE = 1.0, 1e-3


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    """One thread for PyTorch (and onnxruntime below): on shared CPUs, oversubscribed threads
    make each inference many times slower without changing what it computes."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def image_dir(tmp_path_factory):
    root = generate_synthetic_keypoints(tmp_path_factory.mktemp("synthetic"), 0, 6, seed=0)
    return Path(root, "val")


@pytest.fixture(scope="module")
def images(image_dir):
    """Synthetic people (380x260 to 270x370 pixels, so resized both ways), and an empty frame."""
    return [cv2.imread(str(p)) for p in sorted(image_dir.glob("*.jpg"))] + [
        np.full((240, 400, 3), 127, np.uint8)
    ]


def decisive_model():
    """The EDW demo config with random weights, made to find people depending on the image.

    Untrained, every box scores ~0.5, within ~1e-4 of its neighbours, so that float rounding
    (which differs between any two runtimes) decides NMS and ranking. Scaling the RPN's and
    the box classifier's weights spreads the scores (a monotonic change) so that the
    detections, 0 to 8 per image here, follow from the image. A model trained for a few dozen
    iterations is no better: its proposals along the image borders tie to 1e-5 (measured: other
    detections than PyTorch on 5 of 100 synthetic images, the demo-trained model on none).
    """
    cfg = analysis_config(CONFIG)
    cfg.MODEL.ROI_HEADS.SCORE_THRESH_TEST = SCORE_THRESHOLD
    torch.manual_seed(0)
    model = build_model(cfg).eval()
    with torch.no_grad():
        model.proposal_generator.rpn_head.objectness_logits.weight.mul_(100)
        model.roi_heads.box_predictor.cls_score.weight.mul_(100)
    return model


@pytest.fixture(scope="module")
def model():
    return decisive_model()


@pytest.fixture(scope="module")
def exported(model, tmp_path_factory):
    folder = tmp_path_factory.mktemp("export")
    return {
        "onnx": export_onnx(model, folder / "model.onnx"),
        "torchscript": export_torchscript(model, folder / "model.ts"),
    }


# Each runtime of the runner that is installed (the set-up installs both).
RUNTIMES = onnx_pose_runner.available_runtimes()
# What OnnxPoseRunner's errors call each runtime.
RUNTIME_NAMES = {"onnxruntime": "onnxruntime", "openvino": "OpenVINO"}


@pytest.fixture(scope="module", params=RUNTIMES)
def runner(exported, request):
    """The float32 runner on each runtime: both are held to the same parity with PyTorch."""
    return OnnxPoseRunner(exported["onnx"], num_threads=1, runtime=request.param)


def test_onnx_runner_finds_the_same_people_as_pytorch(model, runner, images):
    counts = [len(runner(image)["scores"]) for image in images]
    # Traced on a blank image: the number of detections is not frozen into the graph.
    assert len(set(counts)) >= 4 and counts[-1] == 0, counts
    stats = compare_with_pytorch(model, runner, images)
    assert stats["count_mismatches"] == 0, stats
    assert stats["detections"] == sum(counts)
    assert stats["box_px"] <= MAX_PX and stats["keypoint_px"] <= MAX_PX, stats
    assert stats["score"] <= MAX_SCORE and stats["keypoint_score"] <= MAX_SCORE, stats


def test_runner_output_format_and_its_own_threshold(runner, images):
    image = images[2]
    poses = runner(image)
    n = len(poses["scores"])
    assert n > 1
    assert poses["boxes"].shape == (n, 4) and poses["keypoints"].shape == (n, 17, 3)
    assert (poses["boxes"][:, 2:] <= [image.shape[1], image.shape[0]]).all()
    assert runner.score_threshold == SCORE_THRESHOLD and (poses["scores"] > SCORE_THRESHOLD).all()
    higher = float(np.median(poses["scores"]))
    assert len(runner(image, higher)["scores"]) == (poses["scores"] > higher).sum() < n
    with pytest.raises(ValueError, match=r"below 0.5, the threshold exported into .*model.onnx"):
        runner(image, 0.3)


def test_runner_needs_neither_torch_nor_detectron2(exported, image_dir, runner, tmp_path):
    # A copy of the deploy folder run as `python -m pose_runner`, with torch, detectron2 and
    # this package made unimportable.
    prelude = (
        "import runpy, sys\n"
        "for name in ('torch', 'detectron2', 'd2_edwpose'):\n"
        "    sys.modules[name] = None\n"
    )
    blocked = subprocess.run(
        [sys.executable, "-c", prelude + "import detectron2"], capture_output=True, text=True
    )
    assert "ModuleNotFoundError" in blocked.stderr  # the blocking works
    shutil.copytree(
        Path(onnx_pose_runner.__file__).parent,
        tmp_path / "pose_runner",
        ignore=shutil.ignore_patterns("__pycache__"),
    )
    # Tracking included: the tracker (Roboflow's trackers) must be torch-free too.
    image = sorted(image_dir.glob("*.jpg"))[0]
    output = tmp_path / "out"
    result = subprocess.run(
        [sys.executable, "-c", prelude + "runpy.run_module('pose_runner', run_name='__main__')",
         str(exported["onnx"]), str(image), "--output", str(output), "--threads", "1"],
        capture_output=True, text=True, cwd=tmp_path,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr[-2000:]
    (written,) = [json.loads(line) for line in (output / f"{image.stem}.jsonl").open()]
    assert (output / image.name).is_file()  # the drawing
    expected = runner(cv2.imread(str(image)))
    assert written["source"] == str(image) and len(written["people"]) == len(expected["scores"]) > 0
    np.testing.assert_allclose([p["box"] for p in written["people"]], expected["boxes"], atol=1e-4)
    np.testing.assert_allclose(
        [p["keypoints"] for p in written["people"]], expected["keypoints"], atol=1e-4
    )


def test_torchscript_round_trip_gives_the_same_outputs(model, exported, images):
    module, metadata = load_torchscript(exported["torchscript"])
    assert metadata["input_size"] == [320, 320] and metadata["input_format"] == "RGB"
    stats = compare_torchscript_with_pytorch(model, module, images)
    assert stats["count_mismatches"] == 0 and stats["detections"] > 0, stats
    for name in ("boxes", "scores", "classes", "keypoints"):
        assert stats[name] <= 1e-4, stats


def test_onnx_export_has_edwconvs_as_plain_depthwise_convs(model, exported):
    # An EDWConv's grouped conv with e filters per channel misses oneDNN's depthwise kernel
    # (OpenVINO's too): the export has e plain depthwise convs instead, and the model as built
    # keeps its EDWConvs.
    head = model.roi_heads.keypoint_head
    expand_factors = [
        m.depthwise.out_channels // m.depthwise.in_channels
        for m in head.modules()
        if isinstance(m, EDWConv)
    ]
    assert expand_factors and min(expand_factors) > 1, expand_factors
    graph = onnx.load(exported["onnx"]).graph
    weights = {tensor.name: tensor for tensor in graph.initializer}
    grouped = {}
    for node in graph.node:
        groups = next((a.i for a in node.attribute if a.name == "group"), 1)
        if node.op_type == "Conv" and groups > 1:
            grouped[node.name] = (groups, weights[node.input[1]].dims[0])
    keypoint_convs = [name for name in grouped if "keypoint_head" in name]
    assert len(keypoint_convs) == sum(expand_factors), grouped
    assert all(groups == out_channels for groups, out_channels in grouped.values()), grouped


def test_exports_leave_the_model_as_it_is(model, tmp_path):
    # They trace a copy: the model keeps its mode, its modules and its weights.
    head = model.roi_heads.keypoint_head
    weights = {name: value.clone() for name, value in model.state_dict().items()}
    model.train()
    try:
        export_onnx(model, tmp_path / "model.onnx")
        assert model.training and model.roi_heads.keypoint_head is head
    finally:
        model.eval()
    state = model.state_dict()
    assert state.keys() == weights.keys()
    assert all(torch.equal(state[name], value) for name, value in weights.items())


def test_resize_taps_are_computed_once_and_read_only():
    first = interpolation._bicubic_taps(56, 37)
    assert interpolation._bicubic_taps(56, 37) is first
    for cached, computed in zip(first, interpolation._bicubic_taps.__wrapped__(56, 37)):
        np.testing.assert_array_equal(cached, computed)
        with pytest.raises(ValueError, match="read-only"):
            cached[0] = 0


def test_numpy_decoding_is_detectron2s():
    torch.manual_seed(0)
    # Peaked maps, and boxes smaller and larger than the 56x56 heatmaps, thin and fractional.
    maps = torch.randn(5, 17, 56, 56) * 3
    boxes = torch.tensor(
        [[10.2, 20.7, 40.1, 45.3], [0.0, 0.0, 320.0, 320.0], [100.5, 30.0, 100.9, 200.0],
         [5.0, 5.0, 75.0, 270.0], [250.3, 100.1, 319.8, 140.6]]
    )  # fmt: skip
    expected = detectron2_heatmaps_to_keypoints(maps, boxes)[:, :, [0, 1, 3]].numpy()
    found = heatmaps_to_keypoints(maps.numpy(), boxes.numpy())
    np.testing.assert_allclose(found[..., :2], expected[..., :2], atol=1e-4)
    np.testing.assert_allclose(found[..., 2], expected[..., 2], rtol=1e-4)
    none = heatmaps_to_keypoints(
        np.zeros((0, 17, 56, 56), np.float32), np.zeros((0, 4), np.float32)
    )
    assert none.shape == (0, 17, 3)


@pytest.mark.parametrize(
    "size", [(383, 259), (200, 150), (320, 320), (640, 97), (480, 640), (720, 1280), (1080, 1920)]
)
def test_runner_resize_is_the_models(size):
    rng = np.random.default_rng(0)
    image = rng.integers(0, 256, (*size, 3), dtype=np.uint8)
    planes = image.transpose(2, 0, 1)
    expected = resize_to_fixed_size(torch.as_tensor(planes), (320, 320))
    for pixels in (planes, planes.astype(np.float32)):  # the runner resizes uint8 frames
        found = resize_bilinear_antialiased(pixels, (320, 320))
        assert found.dtype == np.float32 and found.shape == (3, 320, 320)
        assert found.flags.c_contiguous  # the graph's input as it is
        assert np.abs(found - expected.numpy()).max() < 1e-4


@pytest.mark.parametrize("runtime", RUNTIMES)
def test_corrupt_foreign_and_mismatched_files_are_named(exported, tmp_path, runtime, monkeypatch):
    monkeypatch.setattr(runtimes, "RUNTIMES", (runtime,))  # the default runtime
    data = Path(exported["onnx"]).read_bytes()
    truncated = tmp_path / "truncated.onnx"
    truncated.write_bytes(data[: len(data) // 2])
    with pytest.raises(
        ExportedModelError, match=rf"truncated.onnx: {RUNTIME_NAMES[runtime]} cannot load"
    ):
        OnnxPoseRunner(truncated)
    with pytest.raises(FileNotFoundError, match="missing.onnx"):
        OnnxPoseRunner(tmp_path / "missing.onnx")

    foreign = tmp_path / "foreign.onnx"
    x = onnx.helper.make_tensor_value_info("x", onnx.TensorProto.FLOAT, [1])
    y = onnx.helper.make_tensor_value_info("y", onnx.TensorProto.FLOAT, [1])
    graph = onnx.helper.make_graph([onnx.helper.make_node("Identity", ["x"], ["y"])], "g", [x], [y])
    onnx.save(onnx.helper.make_model(graph), foreign)
    with pytest.raises(
        ExportedModelError, match=r"foreign.onnx: not a d2_edwpose pose model.*no 'd2_edwpose'"
    ):
        OnnxPoseRunner(foreign)

    def with_metadata(name, **changes):
        proto = onnx.load_model_from_string(data)
        metadata = json.loads(proto.metadata_props[0].value)
        metadata.update(changes)
        onnx.helper.set_model_props(proto, {"d2_edwpose": json.dumps(metadata)})
        onnx.save(proto, tmp_path / name)
        return tmp_path / name

    expected = r"resized.onnx: the graph's inputs are .*expected one float input 'image' of shape \[3, 256, 256\]"
    with pytest.raises(ExportedModelError, match=expected):
        OnnxPoseRunner(with_metadata("resized.onnx", input_size=[256, 256]))
    with pytest.raises(ExportedModelError, match=r"old.onnx: exported as format 'old/0'"):
        OnnxPoseRunner(with_metadata("old.onnx", format="old/0"))

    with pytest.raises(ValueError, match=r"truncated.ts: not a readable TorchScript file"):
        (tmp_path / "truncated.ts").write_bytes(Path(exported["torchscript"]).read_bytes()[:1000])
        load_torchscript(tmp_path / "truncated.ts")


def test_models_the_runner_cannot_reproduce_are_refused(tmp_path):
    cfg = analysis_config(CONFIG)
    cfg.MODEL.META_ARCHITECTURE = "GeneralizedRCNN"
    with pytest.raises(ValueError, match="only FixedInputSizeRCNN models"):
        export_onnx(build_model(cfg).eval(), tmp_path / "stock.onnx")
    assert list(tmp_path.iterdir()) == []


def test_optimized_model_exports_what_the_model_as_built_computes(model, images, tmp_path):
    # optimize_for_inference's CPU rewrites take detectron2's ops when traced.
    optimized = optimize_for_inference(copy.deepcopy(model))
    module, _ = load_torchscript(export_torchscript(optimized, tmp_path / "optimized.ts"))
    stats = compare_torchscript_with_pytorch(model, module, images)
    assert stats["count_mismatches"] == 0 and stats["detections"] > 0, stats
    for name in ("boxes", "keypoints"):
        assert stats[name] <= 0.01, stats


def test_export_command_writes_both_files_and_checks_them(model, image_dir, tmp_path):
    weights = tmp_path / "weights.pth"
    torch.save({"model": model.state_dict()}, weights)
    output = tmp_path / "export"
    written = export_model.main(
        ["--config-file", str(CONFIG), "--output", str(output), "--verify", str(image_dir),
         "MODEL.WEIGHTS", str(weights), "MODEL.ROI_HEADS.SCORE_THRESH_TEST", str(SCORE_THRESHOLD)]
    )  # fmt: skip
    assert sorted(p.name for p in output.iterdir()) == ["model.onnx", "model.ts"]  # no leftovers
    assert OnnxPoseRunner(written["onnx"]).score_threshold == SCORE_THRESHOLD


def test_export_command_names_what_misses_the_tolerances():
    stats = {"box_px": 2.5, "keypoint_px": 0.1, "score": 0.0, "count_mismatches": 3}
    limits = [("box_px", MAX_PX), ("keypoint_px", MAX_PX), ("score", MAX_SCORE)]
    assert export_model._failures("m.onnx", stats, limits) == [
        "m.onnx: box_px=2.5 > 1",
        "m.onnx: other people found in 3 images",
    ]


def test_runner_latency_of_the_benchmark_model(tmp_path):
    config = REPO_ROOT / "configs" / "keypoint_rcnn_mv3_fpn_320_realtime.yaml"
    model = build_benchmark_model(fix_num_detections(analysis_config(config), 3))
    path = export_onnx(model, tmp_path / "realtime.onnx")
    image = torch.randint(0, 256, (3, 320, 320), dtype=torch.uint8)
    calls = {
        runtime: (runner_call(OnnxPoseRunner(path, num_threads=1, runtime=runtime), image, 3), 3)
        for runtime in RUNTIMES
    }
    times = time_interleaved(calls, warmup=1, repeats=2)
    assert all(len(t) == 2 and all(s > 0 for s in t) for t in times.values())
    with pytest.raises(RuntimeError, match="expected 4 detections, onnxruntime returned 3"):
        time_interleaved({"onnxruntime": (calls["onnxruntime"][0], 4)}, warmup=0, repeats=1)
    steps = profile_runner(OnnxPoseRunner(path, num_threads=1), image, warmup=0, repeats=2)
    assert all(steps[name] > 0 for name in ("pre-processing", "graph", "post-processing"))
    assert steps["graph"] < steps["total"]


def test_demo_trained_model_matches_pytorch(images, tmp_path):
    if not DEMO_WEIGHTS.is_file():
        pytest.skip(f"{DEMO_WEIGHTS} (written by `make demo`) is absent")
    cfg = analysis_config(CONFIG)
    model = build_model(cfg).eval()
    DetectionCheckpointer(model).load(str(DEMO_WEIGHTS))
    runner = OnnxPoseRunner(export_onnx(model, tmp_path / "demo.onnx"), num_threads=1)
    stats = compare_with_pytorch(model, runner, images)
    assert stats["count_mismatches"] == 0 and stats["detections"] > 0, stats
    assert stats["box_px"] <= MAX_PX and stats["keypoint_px"] <= MAX_PX, stats
    assert stats["score"] <= MAX_SCORE and stats["keypoint_score"] <= MAX_SCORE, stats


def test_export_command_refuses_a_verify_folder_without_images(tmp_path):
    (tmp_path / "notes.txt").write_text("not an image")
    with pytest.raises(FileNotFoundError, match=r"--verify .*: no image files"):
        export_model.main(
            [
                "--config-file",
                str(CONFIG),
                "--output",
                str(tmp_path / "out"),
                "--verify",
                str(tmp_path),
            ]
        )
