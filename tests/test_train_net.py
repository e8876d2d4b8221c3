"""train_net.py end to end on CPU: a few training iterations, then --eval-only."""
import json
import os
import re
import subprocess
import sys

import pytest

from d2_edwpose.data.synthetic import generate_synthetic_keypoints

from conftest import REPO_ROOT

DEMO_CONFIG = REPO_ROOT / "configs" / "cpu_demo_keypoint_rcnn_mv3_fpn_320_edw.yaml"
TINY_RUN = [
    "SOLVER.IMS_PER_BATCH", "2",
    "SOLVER.MAX_ITER", "4",
    "SOLVER.WARMUP_ITERS", "2",
    "SOLVER.STEPS", "(3,)",
    "DATALOADER.NUM_WORKERS", "0",
    "TEST.EVAL_PERIOD", "0",
    # The config's PreciseBN, over both passes of the 6 images: with fewer, the statistics of
    # a model 4 iterations old vary so much that on some detectron2 versions it detects nobody.
    "TEST.PRECISE_BN.NUM_ITER", "6",
    # A fixed seed, so that the run is reproducible: after 4 iterations the heatmaps are nearly
    # flat, and with a random seed the optimized model's different rounding moved a keypoint
    # arg-max in some runs (test_optimize.py checks the optimization on calibrated models).
    "SEED", "0",
]  # fmt: skip


def run_train_net(args, env_overrides, cwd):
    env = {**os.environ, **env_overrides}
    return subprocess.run(
        [sys.executable, str(REPO_ROOT / "train_net.py"), *args],
        capture_output=True, text=True, env=env, cwd=cwd, timeout=600,
    )  # fmt: skip


@pytest.fixture(scope="module")
def tiny_synthetic_root(tmp_path_factory):
    return generate_synthetic_keypoints(
        tmp_path_factory.mktemp("synthetic"), num_train=6, num_val=3, seed=1
    )


def test_train_then_eval_only(tiny_synthetic_root, tmp_path):
    env = {"D2_EDWPOSE_SYNTHETIC_ROOT": str(tiny_synthetic_root)}
    output_dir = tmp_path / "run"
    train = run_train_net(
        ["--config-file", str(DEMO_CONFIG), "OUTPUT_DIR", str(output_dir), *TINY_RUN], env, tmp_path
    )
    assert train.returncode == 0, train.stderr[-3000:]
    assert (output_dir / "model_final.pth").is_file()
    assert (output_dir / "last_checkpoint").read_text().strip() == "model_final.pth"
    assert any(p.name.startswith("events.out.tfevents") for p in output_dir.iterdir())
    records = [json.loads(line) for line in (output_dir / "metrics.json").read_text().splitlines()]
    training = [r for r in records if "total_loss" in r]
    assert training[-1]["iteration"] == 3
    assert all(r["total_loss"] == r["total_loss"] for r in training)  # not NaN

    evaluate = run_train_net(
        ["--config-file", str(DEMO_CONFIG), "--eval-only",
         "MODEL.WEIGHTS", str(output_dir / "model_final.pth"),
         "OUTPUT_DIR", str(output_dir / "eval"), *TINY_RUN],
        env, tmp_path,
    )  # fmt: skip
    log = evaluate.stdout + evaluate.stderr
    assert evaluate.returncode == 0, log[-3000:]
    assert "Total inference time" in log and "Total inference pure compute time" in log
    assert "Evaluation results for keypoints" in log
    assert re.search(r"\|\s*AP\s*\|\s*AP50\s*\|\s*AP75\s*\|\s*APm\s*\|\s*APl\s*\|", log)
    assert "Average Recall     (AR) @[ IoU=0.50:0.95 | area=   all | maxDets= 20 ]" in log
    predictions = output_dir / "eval" / "inference" / "synthetic_keypoints_val"
    assert (predictions / "coco_instances_results.json").is_file()

    optimized = run_train_net(
        ["--config-file", str(DEMO_CONFIG), "--eval-only",
         "MODEL.WEIGHTS", str(output_dir / "model_final.pth"),
         "OUTPUT_DIR", str(output_dir / "eval_optimized"), "TEST.OPTIMIZE_FOR_INFERENCE", "True",
         *TINY_RUN],
        env, tmp_path,
    )  # fmt: skip
    assert optimized.returncode == 0, (optimized.stdout + optimized.stderr)[-3000:]
    assert re.search(r"optimize_for_inference \(cpu\): [1-9]\d* folded norms", optimized.stdout)
    results = [
        json.loads((path / "inference" / "synthetic_keypoints_val" / "coco_instances_results.json").read_text())
        for path in (output_dir / "eval", output_dir / "eval_optimized")
    ]  # fmt: skip
    assert len(results[0]) == len(results[1]) > 0
    for reference, result in zip(*results):
        assert result["image_id"] == reference["image_id"]
        assert max(abs(a - b) for a, b in zip(result["bbox"], reference["bbox"])) <= 0.01
        assert max(abs(a - b) for a, b in zip(result["keypoints"], reference["keypoints"])) <= 0.01
        assert abs(result["score"] - reference["score"]) <= 1e-4


def test_missing_coco_stops_at_once_naming_the_path(tmp_path):
    empty = tmp_path / "no_datasets_here"
    empty.mkdir()
    result = run_train_net(
        ["--config-file", str(REPO_ROOT / "configs" / "keypoint_rcnn_mv3_fpn_320_edw.yaml"),
         "MODEL.DEVICE", "cpu", "OUTPUT_DIR", str(tmp_path / "out")],
        {"DETECTRON2_DATASETS": str(empty)}, tmp_path,
    )  # fmt: skip
    assert result.returncode != 0
    message = result.stderr.strip().splitlines()[-1]
    assert message.startswith("FileNotFoundError: Dataset 'keypoints_coco_2017_train'")
    assert str(empty / "coco" / "annotations" / "person_keypoints_train2017.json") in message
    assert "cocodataset.org" in message and "datasets/README.md" in message
