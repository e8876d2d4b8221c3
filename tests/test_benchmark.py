"""The benchmark's modes run what they say: the direct mode every model on exactly N people, the
rewrites mode every rewrite left out in turn (timings untested)."""

import logging

import pytest
import torch

from detectron2 import model_zoo

from d2_edwpose.data.synthetic import generate_synthetic_keypoints, register_synthetic_keypoints
from d2_edwpose.deploy.onnx_pose_runner import OnnxPoseRunner
from d2_edwpose.model_zoo import CONFIG_DIR, PAPER_CONFIGS, REALTIME_CONFIG, STOCK_R50_CONFIG
from d2_edwpose.modeling.analysis import analysis_config
from d2_edwpose.modeling.cpu_inference import REWRITES, optimize_for_inference
from d2_edwpose.tools.benchmark import main
from d2_edwpose.tools.benchmark.direct import (
    format_profile,
    format_table,
    profile_components,
    row_label,
)
from d2_edwpose.tools.benchmark.rewrites import format_rewrites_table
from d2_edwpose.tools.benchmark.timing import (
    build_benchmark_model,
    describe_cpu,
    fix_num_detections,
    measure_latency,
    p10_p90,
    time_interleaved,
)

MODELS = [*PAPER_CONFIGS, REALTIME_CONFIG, model_zoo.get_config_file(STOCK_R50_CONFIG)]


@pytest.mark.parametrize("config", MODELS, ids=lambda p: str(p).rsplit("/", 1)[-1])
@pytest.mark.parametrize("num_people", [1, 7])
def test_direct_mode_yields_n_detections(config, num_people):
    model = build_benchmark_model(fix_num_detections(analysis_config(config), num_people))
    image = torch.randint(0, 256, (3, 320, 320), dtype=torch.uint8)
    times = measure_latency(model, image, num_people, warmup=0, repeats=1)
    assert len(times) == 1 and times[0] > 0
    with torch.no_grad():
        (output,) = model([{"image": image}])
    assert output["instances"].pred_keypoints.shape == (num_people, 17, 3)


@pytest.mark.parametrize("config", [PAPER_CONFIGS[2], REALTIME_CONFIG], ids=lambda p: p.stem)
def test_direct_mode_yields_n_detections_after_optimize_for_inference(config):
    model = optimize_for_inference(
        build_benchmark_model(fix_num_detections(analysis_config(config), 9))
    )
    image = torch.randint(0, 256, (3, 320, 320), dtype=torch.uint8)
    measure_latency(model, image, 9, warmup=0, repeats=1)


def test_a_wrong_number_of_detections_is_an_error():
    model = build_benchmark_model(fix_num_detections(analysis_config(PAPER_CONFIGS[2]), 3))
    with pytest.raises(RuntimeError, match="expected 4 detections, the model returned 3"):
        measure_latency(model, torch.zeros(3, 320, 320, dtype=torch.uint8), 4, warmup=0, repeats=1)


def test_table_states_n_and_ratios():
    rows = [
        {"model": "x_vanilla", "people": 20, "median_ms": 200.0, "p10_ms": 190.0, "p90_ms": 210.0, "params_m": 38.0, "gflops": 90.0},
        {"model": "x_dw", "people": 20, "median_ms": 80.0, "p10_ms": 78.0, "p90_ms": 90.0, "params_m": 22.0, "gflops": 33.0},
        {"model": "detectron2 r50", "people": 20, "median_ms": 400.0, "p10_ms": 390.0, "p90_ms": 420.0, "params_m": 59.0, "gflops": 102.0},
        {"model": "x_dw", "people": 5, "median_ms": 50.0, "p10_ms": 48.0, "p90_ms": 52.0, "params_m": 22.0, "gflops": 26.0},
        {"model": "x_vanilla", "optimized": True, "people": 20, "median_ms": 160.0, "p10_ms": 150.0, "p90_ms": 170.0, "params_m": 38.0, "gflops": 90.0},
        {"model": "x_dw", "optimized": True, "people": 20, "median_ms": 40.0, "p10_ms": 39.0, "p90_ms": 41.0, "params_m": 22.0, "gflops": 33.0},
        {"model": "detectron2 r50", "optimized": True, "people": 20, "median_ms": 320.0, "p10_ms": 310.0, "p90_ms": 330.0, "params_m": 59.0, "gflops": 102.0},
        {"model": "x_dw", "runtime": "onnxruntime", "people": 20, "median_ms": 64.0, "p10_ms": 63.0, "p90_ms": 65.0, "params_m": 22.0, "gflops": 33.0},
        {"model": "x_vanilla", "runtime": "openvino", "precision": "int8", "people": 20, "median_ms": 100.0, "p10_ms": 99.0, "p90_ms": 101.0, "params_m": 38.0, "gflops": 90.0},
        {"model": "x_dw", "runtime": "openvino", "precision": "int8", "people": 20, "median_ms": 25.0, "p10_ms": 24.0, "p90_ms": 26.0, "params_m": 22.0, "gflops": 33.0},
    ]  # fmt: skip
    table = format_table(rows, 20, "cpu", (320, 320))
    assert "| x_dw (onnxruntime) | 64 ms (63–65) | 15.6 | – | 6.25× |" in table
    # A runtime and precision compares with the vanilla row of the same runtime and precision.
    assert "| x_dw (openvino int8) | 25 ms (24–26) | 40.0 | 4.00× | 16.00× |" in table
    assert "models timed in interleaved rounds" in table and describe_cpu() in table
    assert "N = 20 people per image" in table
    assert "| x_dw | 80 ms (78–90) | 12.5 | 2.50× | 5.00× | 22.0 M | 33.0 |" in table
    assert "50 ms" not in table
    # Optimized rows compare with the optimized vanilla row and with the stock model as built.
    assert "| x_dw + optimize_for_inference | 40 ms (39–41) | 25.0 | 4.00× | 10.00× |" in table
    assert (
        "| detectron2 r50 + optimize_for_inference | 320 ms (310–330) | 3.1 | 0.50× | 1.25× |"
        in table
    )


def test_profile_times_every_part_and_removes_its_hooks():
    model = build_benchmark_model(fix_num_detections(analysis_config(REALTIME_CONFIG), 3))
    image = torch.randint(0, 256, (3, 320, 320), dtype=torch.uint8)
    profile = profile_components(model, image, warmup=0, repeats=2)
    parts = [
        "backbone",
        "RPN",
        "box RoIAlign",
        "box head",
        "box predictor",
        "keypoint RoIAlign",
        "keypoint head",
    ]
    assert all(profile[name] > 0 for name in [*parts, "keypoint convs", "keypoint decoding"])
    assert profile["keypoint convs"] < profile["keypoint head"]
    assert sum(profile[name] for name in parts) < profile["total"]
    assert not any(m._forward_hooks or m._forward_pre_hooks for m in model.modules())
    assert "| keypoint_rcnn_mv3_fpn_320_realtime | " in format_profile(
        [("keypoint_rcnn_mv3_fpn_320_realtime", profile)], 3
    )


def test_deploy_rows_come_from_the_exported_and_quantized_model(tmp_path):
    rows = main(
        [str(REALTIME_CONFIG), "--deploy", "onnxruntime:fp32", "openvino:int8",
         "--num-people", "3", "--warmup", "0", "--repeats", "2", "--keep-exports", str(tmp_path)]
    )  # fmt: skip
    assert [(row_label(r), r["people"]) for r in rows] == [
        ("keypoint_rcnn_mv3_fpn_320_realtime", 3),
        ("keypoint_rcnn_mv3_fpn_320_realtime (onnxruntime)", 3),
        ("keypoint_rcnn_mv3_fpn_320_realtime (openvino int8)", 3),
    ]
    # The files the rows timed, for a runtime's own profiler.
    kept = tmp_path / "keypoint_rcnn_mv3_fpn_320_realtime"
    assert OnnxPoseRunner(kept / "model.onnx").precision == "fp32"
    assert OnnxPoseRunner(kept / "model_int8.onnx").precision == "int8"
    with pytest.raises(SystemExit):
        main([str(REALTIME_CONFIG), "--deploy", "onnxruntime:bf16"])
    with pytest.raises(SystemExit):
        main([str(REALTIME_CONFIG), "--keep-exports", str(tmp_path)])  # without --deploy
    with pytest.raises(SystemExit):
        main([str(REALTIME_CONFIG), "--dataset", "synthetic_keypoints_val", "--deploy"])


def test_kept_exports_are_those_of_the_run(tmp_path):
    kept = tmp_path / "keypoint_rcnn_mv3_fpn_320_realtime"
    kept.mkdir()
    (kept / "model_int8.onnx").write_bytes(b"an INT8 file of an earlier run")
    main(
        [str(REALTIME_CONFIG), "--deploy", "onnxruntime:fp32", "--num-people", "3",
         "--warmup", "0", "--repeats", "2", "--keep-exports", str(tmp_path)]
    )  # fmt: skip
    assert sorted(p.name for p in kept.iterdir()) == ["model.onnx"]


def test_interleaved_rounds_call_every_model_in_turn():
    order = []
    calls = {name: (lambda name=name: order.append(name) or 2, 2) for name in "abc"}
    times = time_interleaved(calls, warmup=1, repeats=2)
    assert order == list("abc") * 3 and all(len(t) == 2 for t in times.values())
    with pytest.raises(RuntimeError, match="expected 3 detections, b returned 2"):
        time_interleaved({"b": (lambda: 2, 3)}, warmup=0, repeats=1)


def test_interleaved_rounds_read_the_clock_given():
    ticks = iter(range(100))
    times = time_interleaved({"a": (lambda: 1, 1)}, warmup=0, repeats=2, clock=lambda: next(ticks))
    assert times == {"a": [1, 1]}


def test_cpu_description_names_model_cores_and_instruction_sets(tmp_path):
    cpuinfo = tmp_path / "cpuinfo"
    cpuinfo.write_text(
        "processor\t: 0\nmodel name\t: Some Xeon(R) CPU\nflags\t\t: fpu avx2 avx512f avx512_vnni amx_tile\n"
        "processor\t: 1\nmodel name\t: Some Xeon(R) CPU\nflags\t\t: fpu avx2 avx512f avx512_vnni amx_tile\n"
    )
    description = describe_cpu(str(cpuinfo))
    assert description.startswith(f"Some Xeon(R) CPU, {torch.get_num_threads()} of ")
    assert description.endswith("AVX2, AVX-512, AVX-512 VNNI, AMX")
    assert describe_cpu(str(tmp_path / "none")).startswith("unknown CPU")


def test_rewrites_mode_times_each_rewrite_left_out(capsys):
    results = main(
        [str(REALTIME_CONFIG), "--rewrites", "--device", "cpu", "--num-people", "3",
         "--warmup", "0", "--repeats", "2"]
    )  # fmt: skip
    (variants,) = results.values()
    assert list(variants) == ["as built", "all rewrites", *REWRITES]
    assert all(len(times) == 2 for times in variants.values())
    table = capsys.readouterr().out
    assert describe_cpu() in table and "(t_without − t_all) / t_without" in table
    assert "| rewrite | keypoint_rcnn_mv3_fpn_320_realtime without | share |" in table
    for rewrite in REWRITES:
        assert f"| {rewrite} | " in table
    with pytest.raises(SystemExit):
        main([str(REALTIME_CONFIG), "--rewrites", "--optimize", "--device", "cpu"])
    with pytest.raises(SystemExit):
        main([str(REALTIME_CONFIG), "--cpu-time", "--device", "cpu"])  # without --rewrites


def test_rewrites_table_states_each_rewrites_share_of_the_latency_without_it():
    seconds = {"all rewrites": [0.08, 0.08], "as built": [0.2, 0.2]}
    seconds.update({rewrite: [0.1, 0.1] for rewrite in REWRITES})
    # Paired by round: a slower round 2 for "b" leaves the shares as they are.
    slow_round = {variant: [t[0], 2 * t[1]] for variant, t in seconds.items()}
    table = format_rewrites_table(
        {"a": seconds, "b": {**slow_round, "best_first_rpn": [0.08, 0.16]}}, 20, (320, 320)
    )
    assert "| (all rewrites) | 80.0 ms | – | 120.0 ms | – |" in table
    as_built = "+60.0% (+60.0 to +60.0)"
    assert f"| (as built: none) | 200.0 ms | {as_built} | 300.0 ms | {as_built} |" in table
    assert (
        "| best_first_rpn | 100.0 ms | +20.0% (+20.0 to +20.0) | 120.0 ms "
        "| +0.0% (+0.0 to +0.0) |" in table
    )
    assert "N = 20 people per image" in table and "2 interleaved rounds" in table


class _Records(logging.Handler):
    def __init__(self):
        super().__init__()
        self.messages = []

    def emit(self, record):
        self.messages.append(record.getMessage())


def test_dataset_mode_logs_detectron2s_inference_timer(tmp_path, restore_synthetic_registration):
    register_synthetic_keypoints(generate_synthetic_keypoints(tmp_path, 0, 3, seed=4))
    config = str(CONFIG_DIR / "cpu_demo_keypoint_rcnn_mv3_fpn_320_edw.yaml")
    records = _Records()
    timer_logger = logging.getLogger("detectron2.evaluation.evaluator")
    timer_logger.addHandler(records)
    try:
        main([config, "--dataset", "synthetic_keypoints_val", "--opts", "MODEL.WEIGHTS", ""])
    finally:
        timer_logger.removeHandler(records)
    timings = [m for m in records.messages if m.startswith("Total inference")]
    assert len(timings) == 2 and "pure compute time" in timings[1], records.messages
    # The dataset mode measures one config; the default is the four of the direct mode.
    for configs in ([], [config, config]):
        with pytest.raises(SystemExit):
            main([*configs, "--dataset", "synthetic_keypoints_val"])


@pytest.mark.parametrize("values", [[20.0, 60.0], [49.2, 49.3, 52.9], [5.0, 1.0, 3.0, 2.0, 4.0]])
def test_the_spread_lies_within_the_rounds(values):
    low, high = p10_p90(values)
    assert min(values) <= low <= high <= max(values)


def test_video_mode_times_each_frame_size_end_to_end():
    rows = main(
        ["--video", "synthetic", "--deploy", "openvino:fp32", "--video-sizes", "320x240",
         "640x360", "--video-frames", "6", "--num-people", "3", "--warmup", "0", "--repeats", "2"]
    )  # fmt: skip
    assert [(r["model"], r["runtime"], r["precision"], r["size"]) for r in rows] == [
        ("keypoint_rcnn_mv3_fpn_320_realtime", "openvino", "fp32", "320×240"),
        ("keypoint_rcnn_mv3_fpn_320_realtime", "openvino", "fp32", "640×360"),
    ]
    for r in rows:
        assert r["frames"] == 6 and 0 < r["fps_p10"] <= r["fps"] <= r["fps_p90"]
        assert set(r["stages"]) == {
            "decode", "pre-processing", "graph", "post-processing", "tracking", "drawing",
            "encoding",
        }  # fmt: skip
        assert all(ms > 0 for ms in r["stages"].values())


# Slow: it builds and runs every candidate's graph (OpenVINO's reference Pillow-mode
# Interpolate among them).
@pytest.mark.slow
def test_resize_comparison_measures_each_candidate_against_pytorch():
    from d2_edwpose.tools.benchmark import resize

    rows = resize.main(["--sizes", "400x300", "--repeats", "1"])
    by_name = {r["candidate"]: r for r in rows}
    assert set(by_name) == set(resize.resize_candidates())
    assert all(r["size"] == "400×300" and r["frames"] == 3 and r["ms"] > 0 for r in rows)
    # The runner's resize is PyTorch's; Pillow on uint8 rounds, OpenCV's filters are others.
    assert by_name["runner (numpy, OpenCV transposes)"]["max_error"] < 1e-4
    assert 0.2 < by_name["Pillow BILINEAR, uint8 RGB"]["max_error"] <= 1.0
    assert by_name["cv2.resize INTER_LINEAR"]["max_error"] > 1.0
