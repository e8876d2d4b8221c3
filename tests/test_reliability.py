"""Reliability: exact resumption after SIGKILL, atomic checkpoints, clear errors for bad inputs,
multi-process (DistributedDataParallel) training, and the soak tool.

The end-to-end runs use tests/train_net_with_faults.py (train_net.py plus injected faults) in
subprocesses with one intra-op thread: the same number of threads is what makes CPU float
reductions repeat bit for bit, and it keeps them fast on a busy 2-core machine.
"""

import json
import logging
import math
import os
import random
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from detectron2.data import DatasetCatalog, DatasetMapper, MetadataCatalog
from detectron2.data.datasets import register_coco_instances
from detectron2.data.datasets.builtin_meta import _get_builtin_metadata
from detectron2.modeling import build_model

from d2_edwpose.data.checks import SampleLoadError, check_annotations
from d2_edwpose.data.synthetic import generate_synthetic_keypoints, register_synthetic_keypoints
from d2_edwpose.engine.checkpoint import AtomicValidatingCheckpointer
from d2_edwpose.data.train_loader import (
    ResumableTrainingSampler,
    ResumableTrainLoader,
    build_resumable_train_loader,
)
from d2_edwpose.engine import Trainer

from conftest import DEMO_CONFIG, REPO_ROOT, demo_cfg

WITH_FAULTS = REPO_ROOT / "tests" / "train_net_with_faults.py"
SINGLE_THREAD = {"OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
# 6 iterations of 2 images, checkpoints after iterations 2 and 5, no evaluation.
TINY_RUN = [
    "SOLVER.IMS_PER_BATCH", "2", "SOLVER.MAX_ITER", "6", "SOLVER.CHECKPOINT_PERIOD", "3",
    "SOLVER.WARMUP_ITERS", "2", "SOLVER.STEPS", "(4,)", "DATASETS.TEST", "()", "SEED", "7",
    "TEST.PRECISE_BN.NUM_ITER", "2",
]  # fmt: skip
# The config's PreciseBN (of TINY_RUN's 2 batches) also after iterations 2 and 5, before their
# checkpoints.
PRECISE_BN = ["TEST.EVAL_PERIOD", "3"]


def run_with_faults(args, env, cwd):
    return subprocess.run(
        [sys.executable, str(WITH_FAULTS), "--config-file", str(DEMO_CONFIG), *args],
        capture_output=True, text=True, env={**os.environ, **SINGLE_THREAD, **env}, cwd=cwd,
        timeout=600,
    )  # fmt: skip


def read_batches(log):
    return [json.loads(line) for line in Path(log).read_text().splitlines()]


def load_checkpoint(path):
    return torch.load(path, map_location="cpu", weights_only=False)


def assert_same(a, b, where="checkpoint"):
    """Recursive exact equality of nested dicts/lists of tensors and plain values."""
    if isinstance(a, torch.Tensor):
        same = isinstance(b, torch.Tensor) and a.dtype == b.dtype and torch.equal(a, b)
        assert same, f"{where} differs"
    elif isinstance(a, dict):
        assert a.keys() == b.keys(), where
        for key in a:
            assert_same(a[key], b[key], f"{where}[{key!r}]")
    elif isinstance(a, (list, tuple)):
        assert len(a) == len(b), where
        for i, (x, y) in enumerate(zip(a, b)):
            assert_same(x, y, f"{where}[{i}]")
    else:
        assert a == b, f"{where}: {a!r} != {b!r}"


@pytest.fixture(scope="module")
def tiny_root(tmp_path_factory):
    return generate_synthetic_keypoints(
        tmp_path_factory.mktemp("synthetic"), num_train=6, num_val=2, seed=1
    )


@pytest.fixture
def one_thread():
    """In-process training: one intra-op thread (fast on a busy machine), restored after."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


# ----------------------------------------------------------------------------- resumption
def test_sigkill_then_resume_equals_an_uninterrupted_run(tiny_root, tmp_path):
    """Killed right after the checkpoint of iteration 2, resumed, killed again half-way through
    writing the checkpoint of iteration 5, resumed again: the final checkpoint is bit for bit
    the one of an uninterrupted run, and so are the batches (images and augmentations). With
    PreciseBN before each checkpoint: its statistics are the uninterrupted run's too."""
    env = {"D2_EDWPOSE_SYNTHETIC_ROOT": str(tiny_root)}
    straight, resumed = tmp_path / "straight", tmp_path / "resumed"
    # The uninterrupted run loads data in a worker process, the interrupted one in the main
    # process: the data stream must not depend on it.
    run = run_with_faults(
        [*TINY_RUN, *PRECISE_BN, "OUTPUT_DIR", str(straight), "DATALOADER.NUM_WORKERS", "1"],
        {**env, "D2_EDWPOSE_TEST_BATCH_LOG": str(tmp_path / "straight.batches")}, tmp_path,
    )  # fmt: skip
    assert run.returncode == 0, run.stderr[-3000:]
    assert (run.stdout + run.stderr).count("Running PreciseBN for 2 iterations") == 2

    opts = [*TINY_RUN, *PRECISE_BN, "OUTPUT_DIR", str(resumed), "DATALOADER.NUM_WORKERS", "0"]
    logs = [tmp_path / f"resumed{i}.batches" for i in range(3)]
    killed = run_with_faults(
        opts,
        {**env, "D2_EDWPOSE_TEST_KILL_AFTER_ITER": "2", "D2_EDWPOSE_TEST_BATCH_LOG": str(logs[0])},
        tmp_path,
    )
    assert killed.returncode == -9, killed.stderr[-3000:]
    assert (resumed / "last_checkpoint").read_text() == "model_0000002.pth"

    killed_saving = run_with_faults(
        ["--resume", *opts],
        {
            **env,
            "D2_EDWPOSE_TEST_KILL_DURING_SAVE": "model_0000005.pth",
            "D2_EDWPOSE_TEST_BATCH_LOG": str(logs[1]),
        },
        tmp_path,
    )
    assert killed_saving.returncode == -9, killed_saving.stderr[-3000:]
    assert "Starting training from iteration 3" in killed_saving.stdout + killed_saving.stderr
    # Nothing half-written under a checkpoint's name; the previous checkpoint is intact.
    assert not (resumed / "model_0000005.pth").exists()
    assert (resumed / "last_checkpoint").read_text() == "model_0000002.pth"
    assert load_checkpoint(resumed / "model_0000002.pth")["iteration"] == 2

    finished = run_with_faults(
        ["--resume", *opts], {**env, "D2_EDWPOSE_TEST_BATCH_LOG": str(logs[2])}, tmp_path
    )
    assert finished.returncode == 0, finished.stderr[-3000:]
    assert "Starting training from iteration 3" in finished.stdout + finished.stderr

    # Data order: iterations 0-2, then 3-5 (twice), exactly as in the uninterrupted run.
    straight_batches = read_batches(f"{tmp_path / 'straight.batches'}.rank0")
    first, second, third = (read_batches(f"{log}.rank0") for log in logs)
    assert len(straight_batches) == 6 and len(first) == 3
    assert first + third == straight_batches and second == third

    expected = load_checkpoint(straight / "model_final.pth")
    actual = load_checkpoint(resumed / "model_final.pth")
    assert actual["iteration"] == expected["iteration"] == 5
    trainer_state = actual["trainer"]
    # Optimizer (momentum buffers, per-group LR) and LR scheduler were restored and continued.
    assert trainer_state["_trainer"]["optimizer"]["state"], "no momentum saved"
    assert "LRScheduler" in trainer_state["hooks"]
    assert_same(trainer_state, expected["trainer"], "trainer")
    assert_same(actual["model"], expected["model"], "model")


def test_sampler_continues_its_stream_and_shards_it_by_rank():
    def take(sampler, n):
        batches = iter(sampler)
        return [next(batches) for _ in range(n)]

    whole = take(ResumableTrainingSampler(5, 4, seed=3, rank=0, world_size=1), 6)
    positions = [p for batch in whole for p, _ in batch]
    assert positions == list(range(24))
    indices = [i for batch in whole for _, i in batch]
    for epoch in range(4):  # every pass over the dataset is a permutation, each a different one
        assert sorted(indices[5 * epoch : 5 * epoch + 5]) == list(range(5))
    assert len({tuple(indices[5 * e : 5 * e + 5]) for e in range(4)}) > 1

    restarted = ResumableTrainingSampler(5, 4, seed=3, start_iter=4, rank=0, world_size=1)
    assert take(restarted, 2) == whole[4:]
    # Two ranks of 2 samples per iteration interleave into the same global stream.
    ranks = [take(ResumableTrainingSampler(5, 2, seed=3, rank=r, world_size=2), 6) for r in (0, 1)]
    for iteration in range(6):
        merged = sorted(ranks[0][iteration] + ranks[1][iteration])
        assert merged == sorted(whole[iteration])
    assert take(ResumableTrainingSampler(5, 4, seed=4, rank=0, world_size=1), 6) != whole


def _random_mapper(record):
    # Every global RNG an augmentation may draw from.
    return (record["id"], random.random(), float(np.random.rand()), float(torch.rand(())))


def test_loader_is_independent_of_workers_and_restarts_anywhere():
    dataset = [{"id": i} for i in range(7)]

    def batches(num_workers, start_iter, count):
        loader = ResumableTrainLoader(
            dataset, _random_mapper, total_batch_size=3, num_workers=num_workers, seed=11
        )
        loader.seek(start_iter, seed=11)
        stream = iter(loader)
        return [next(stream) for _ in range(count)]

    def global_draws():
        return random.random(), float(np.random.rand()), float(torch.rand(()))

    for seed in (random.seed, np.random.seed, torch.manual_seed):
        seed(0)
    reference = batches(0, 0, 6)
    after_loading = global_draws()
    for seed in (random.seed, np.random.seed, torch.manual_seed):
        seed(0)
    assert global_draws() == after_loading, "loading in the main process moved the global RNGs"

    assert batches(2, 0, 6) == reference
    assert batches(0, 4, 2) == reference[4:]
    assert batches(2, 4, 2) == reference[4:]
    # A sample's augmentation draws depend on its place in the stream, not on the image.
    draws = [sample[1:] for batch in reference for sample in batch]
    assert len(set(draws)) == len(draws)


def test_seek_after_the_first_batch_is_refused():
    loader = ResumableTrainLoader(
        [{"id": 0}], _random_mapper, total_batch_size=1, num_workers=0, seed=0
    )
    next(iter(loader))
    with pytest.raises(RuntimeError, match="before the first batch"):
        loader.seek(5, seed=0)


# ----------------------------------------------------------------------------- checkpoints
@pytest.fixture(scope="module")
def demo_model():
    return build_model(demo_cfg("MODEL.DEVICE", "cpu"))


def test_missing_weights_name_the_config_key(demo_model, tmp_path):
    missing = tmp_path / "no_such_model.pth"
    with pytest.raises(FileNotFoundError) as error:
        AtomicValidatingCheckpointer(demo_model).resume_or_load(str(missing), resume=False)
    assert "MODEL.WEIGHTS" in str(error.value) and str(missing) in str(error.value)

    (tmp_path / "last_checkpoint").write_text("model_0000099.pth")
    with pytest.raises(FileNotFoundError, match="last_checkpoint names the checkpoint"):
        AtomicValidatingCheckpointer(demo_model, str(tmp_path)).resume_or_load("", resume=True)


def test_weights_of_another_architecture_are_refused_listing_the_keys(demo_model, tmp_path):
    other = build_model(
        demo_cfg("MODEL.MOBILENETV3.ARCH", "large", "MODEL.FPN.OUT_CHANNELS", 32,
                 "MODEL.ROI_KEYPOINT_HEAD.CONV_DIMS", (32, 32))
    )  # fmt: skip
    foreign = tmp_path / "other_architecture.pth"
    torch.save({"model": other.state_dict()}, foreign)
    with pytest.raises(ValueError) as error:
        AtomicValidatingCheckpointer(demo_model).resume_or_load(str(foreign), resume=False)
    message = str(error.value)
    assert str(foreign) in message and "does not fit the model" in message
    assert "with another shape (checkpoint vs model): " in message
    assert "backbone.bottom_up.features." in message and "not in the model: " in message

    # A partial fit is legitimate (here: the backbone only, like ImageNet weights): it loads.
    backbone = {k: v for k, v in demo_model.state_dict().items() if k.startswith("backbone.")}
    partial = tmp_path / "backbone_only.pth"
    torch.save({"model": backbone}, partial)
    AtomicValidatingCheckpointer(demo_model).resume_or_load(str(partial), resume=False)


def test_bad_values_and_unknown_keys_name_the_key(tmp_path):
    cases = {
        "INPUT.FIXED_SIZE": ((320, 0), "two positive integers"),
        "MODEL.MOBILENETV3.ARCH": ("medium", "'large' or 'small'"),
        "MODEL.MOBILENETV3.WIDTH_MULT": (-1.0, "a positive number"),
        "MODEL.MOBILENETV3.OUT_FEATURES": (["stage6"], "names from"),
        "MODEL.BACKBONE.FREEZE_AT": (7, "an integer from 0"),
        "MODEL.MOBILENETV3.NORM": ("BatchNorm", "get_norm"),
        "MODEL.ROI_KEYPOINT_HEAD.CONV_TYPE": ("separable", "'vanilla', 'dw', 'edw'"),
        "MODEL.ROI_KEYPOINT_HEAD.EXPAND_FACTOR": (0, "an integer >= 1"),
    }
    build_model(demo_cfg())
    for key, (value, expected) in cases.items():
        cfg = demo_cfg()
        node, name = cfg, key.split(".")
        for part in name[:-1]:
            node = node[part]
        node[name[-1]] = value
        with pytest.raises(ValueError) as error:
            build_model(cfg)  # each component checks the keys it reads
        assert str(error.value).startswith(f"{key}={value!r} is invalid: expected"), error.value
        assert expected in str(error.value)
    # A conv type that the configured keypoint head would silently ignore.
    stock_head = demo_cfg("MODEL.ROI_KEYPOINT_HEAD.NAME", "KRCNNConvDeconvUpsampleHead")
    assert stock_head.MODEL.ROI_KEYPOINT_HEAD.CONV_TYPE == "edw"
    with pytest.raises(ValueError, match="CONV_TYPE='edw' is invalid: expected 'vanilla': "
                       "ROI_KEYPOINT_HEAD.NAME='KRCNNConvDeconvUpsampleHead'"):  # fmt: skip
        build_model(stock_head)

    # yacs: an AssertionError for a command-line override, a KeyError for a file.
    with pytest.raises(AssertionError, match="Non-existent key: MODEL.MOBILENETV3.ARHC"):
        demo_cfg("MODEL.MOBILENETV3.ARHC", "small")
    typo = tmp_path / "typo.yaml"
    typo.write_text(f'_BASE_: "{DEMO_CONFIG}"\nMODEL:\n  ROI_KEYPOINT_HEAD:\n    CONV_TPYE: "dw"\n')
    with pytest.raises(KeyError, match="MODEL.ROI_KEYPOINT_HEAD.CONV_TPYE"):
        demo_cfg().merge_from_file(str(typo))
    with pytest.raises(ValueError, match="MODEL.BACKBONE.FREEZE_AT"):  # yacs: type mismatch
        demo_cfg("MODEL.BACKBONE.FREEZE_AT", "two")


# ----------------------------------------------------------------------------- bad data
@pytest.fixture
def odd_dataset(tiny_root, tmp_path):
    """A COCO keypoints file with an image whose only people have empty boxes, a person with a
    keypoint outside the image, an image without people, and a normal image."""
    annotation_file = Path(tiny_root) / "annotations" / "person_keypoints_train.json"
    source = json.loads(annotation_file.read_text())
    images = source["images"][:4]
    by_image = {im["id"]: [] for im in images}
    for annotation in source["annotations"]:
        by_image.get(annotation["image_id"], []).append(annotation)
    empty, outside, nobody, normal = images
    for annotation in by_image[empty["id"]]:
        annotation["bbox"][2] = 0.0  # zero width
    moved = by_image[outside["id"]][0]
    moved["keypoints"][0:3] = [outside["width"] + 40, 10, 2]  # the nose, 40 px right of the image
    annotations = by_image[empty["id"]] + by_image[outside["id"]] + by_image[normal["id"]]
    json_file = tmp_path / "odd.json"
    json_file.write_text(json.dumps({**source, "images": images, "annotations": annotations}))
    name = f"d2_edwpose_test_odd_{tmp_path.name}"
    register_coco_instances(
        name, _get_builtin_metadata("coco_person"), str(json_file), str(Path(tiny_root) / "train")
    )
    yield name, {"empty": empty, "outside": outside, "nobody": nobody, "normal": normal}
    DatasetCatalog.remove(name)
    MetadataCatalog.remove(name)


def test_odd_annotations_are_reported_and_train(odd_dataset, tmp_path, caplog, one_thread):
    name, images = odd_dataset
    cfg = demo_cfg(
        "DATASETS.TRAIN", (name,), "DATASETS.TEST", (), "OUTPUT_DIR", tmp_path,
        "DATALOADER.FILTER_EMPTY_ANNOTATIONS", False, "SOLVER.IMS_PER_BATCH", 4,
        "MODEL.ROI_KEYPOINT_HEAD.MIN_KEYPOINTS_PER_IMAGE", 0,
        "SOLVER.MAX_ITER", 2, "SOLVER.WARMUP_ITERS", 1, "SOLVER.STEPS", (1,),
        "DATALOADER.NUM_WORKERS", 0, "SEED", 1, "TEST.PRECISE_BN.NUM_ITER", 2,
    )  # fmt: skip
    # On the package logger itself: setup_logger(name="d2_edwpose") stops propagation.
    package_logger = logging.getLogger("d2_edwpose")
    package_logger.addHandler(caplog.handler)
    try:
        with caplog.at_level(logging.INFO, logger="d2_edwpose"):
            trainer = Trainer(cfg)
    finally:
        package_logger.removeHandler(caplog.handler)
    messages = "\n".join(r.getMessage() for r in caplog.records if r.name.startswith("d2_edwpose"))
    assert "box of zero or negative width or height" in messages
    assert images["empty"]["file_name"] in messages
    assert "labelled keypoints outside the image" in messages
    assert images["outside"]["file_name"] in messages
    assert "1 of 4 training images have no person" in messages

    # detectron2's mapper drops the empty boxes and unlabels the keypoint outside the image.
    records = {Path(r["file_name"]).name: r for r in DatasetCatalog.get(name)}
    mapper = DatasetMapper(demo_cfg("DATASETS.TRAIN", (name,), "INPUT.RANDOM_FLIP", "none"), True)
    assert len(mapper(dict(records[images["empty"]["file_name"]]))["instances"]) == 0
    mapped = mapper(dict(records[images["outside"]["file_name"]]))["instances"]
    assert mapped.gt_keypoints.tensor[0, 0, 2] == 0

    # A whole batch of them (4 images, one with no instance left) trains with finite losses.
    trainer.resume_or_load(resume=False)
    trainer.train()
    losses = trainer.storage.history("total_loss").values()
    assert len(losses) == 2 and all(math.isfinite(v) for v, _ in losses)

    # With the defaults (FILTER_EMPTY_ANNOTATIONS, MIN_KEYPOINTS_PER_IMAGE=1), detectron2
    # removes the image without people.
    filtered = build_resumable_train_loader(demo_cfg("DATASETS.TRAIN", (name,), "SEED", 0))
    assert len(filtered.dataset) == 3


def test_keypoints_of_the_wrong_length_are_an_error():
    record = {
        "file_name": "/data/img.jpg", "height": 10, "width": 10,
        "annotations": [{"bbox": [0, 0, 5, 5], "bbox_mode": 1, "keypoints": [1, 1, 2] * 5}],
    }  # fmt: skip
    expected = r"img.jpg \(annotation 0\) has 15 keypoint values; expected 51"
    with pytest.raises(ValueError, match=expected):
        check_annotations([record], ["toy"], num_keypoints=17)


def test_unreadable_images_stop_loading_naming_the_file(tmp_path, restore_synthetic_registration):
    """Files that go bad after the image scan (tests/test_image_scan.py), as in a run: the
    loader's error names them, also from a worker."""
    root = Path(generate_synthetic_keypoints(tmp_path / "data", num_train=2, num_val=1, seed=2))
    (root / "train" / "000001.jpg").write_bytes(b"this is not a JPEG")
    truncated = root / "val" / "000000.jpg"
    truncated.write_bytes(truncated.read_bytes()[:2000])
    register_synthetic_keypoints(root)
    cfg = demo_cfg(
        "SOLVER.IMS_PER_BATCH", 2, "DATALOADER.NUM_WORKERS", 1, "SEED", 0,
        "DATASETS.IMAGE_SCAN.ENABLED", False,
    )  # fmt: skip

    with pytest.raises(SampleLoadError) as error:  # raised in a worker, re-raised here
        next(iter(Trainer.build_train_loader(cfg)))
    assert str(root / "train" / "000001.jpg") in str(error.value)

    with pytest.raises(SampleLoadError) as error:
        next(iter(Trainer.build_test_loader(cfg, "synthetic_keypoints_val")))
    assert str(truncated) in str(error.value) and "truncated" in str(error.value)


def test_non_finite_loss_stops_naming_the_iteration(
    tiny_root, tmp_path, one_thread, restore_synthetic_registration
):
    register_synthetic_keypoints(tiny_root)
    cfg = demo_cfg(
        "DATASETS.TEST", (), "OUTPUT_DIR", tmp_path, "SOLVER.IMS_PER_BATCH", 1,
        "SOLVER.MAX_ITER", 5, "SOLVER.CHECKPOINT_PERIOD", 1, "DATALOADER.NUM_WORKERS", 0,
    )  # fmt: skip
    trainer = Trainer(cfg)
    trainer.resume_or_load(resume=False)
    model = trainer.model
    forward = model.forward

    def nan_at_iteration_2(batched_inputs):
        losses = forward(batched_inputs)
        if trainer.iter == 2:
            losses["loss_keypoint"] = losses["loss_keypoint"] * float("nan")
        return losses

    model.forward = nan_at_iteration_2
    with pytest.raises(FloatingPointError, match="iteration=2"):
        trainer.train()
    # The checkpoints of iterations 0 and 1 are there; nothing of the diverged step is saved.
    assert (tmp_path / "last_checkpoint").read_text() == "model_0000001.pth"


# ----------------------------------------------------------------------------- distributed
@pytest.mark.parametrize(
    "norm",
    [
        ["MODEL.MOBILENETV3.NORM", "naiveSyncBN", "TEST.PRECISE_BN.ENABLED", "False"],
        ["MODEL.MOBILENETV3.NORM", "BN", "TEST.PRECISE_BN.NUM_ITER", "2"],
    ],
    ids=["naiveSyncBN", "BN+PreciseBN"],
)
def test_two_processes_train_with_ddp_and_end_with_identical_weights(tiny_root, tmp_path, norm):
    """2 CPU processes (gloo), 3 iterations of 2 images each: each rank trains on other images,
    yet all parameters and buffers end equal (gradients are averaged; naiveSyncBN averages the
    batch statistics, PreciseBN the final statistics of per-process BN), and the ranks' images
    are the two halves of the 1-process stream."""
    state = tmp_path / "state"
    state.mkdir()
    run = run_with_faults(
        ["--num-gpus", "2", "--dist-url", "auto",
         "SOLVER.IMS_PER_BATCH", "4", "SOLVER.MAX_ITER", "3", "SOLVER.WARMUP_ITERS", "1",
         "SOLVER.STEPS", "(2,)", "DATASETS.TEST", "()", "SEED", "3", "DATALOADER.NUM_WORKERS", "0",
         *norm, "OUTPUT_DIR", str(tmp_path / "out")],
        {"D2_EDWPOSE_SYNTHETIC_ROOT": str(tiny_root), "D2_EDWPOSE_TEST_RANK_STATE": str(state),
         "D2_EDWPOSE_TEST_BATCH_LOG": str(tmp_path / "batches")},
        tmp_path,
    )  # fmt: skip
    assert run.returncode == 0, run.stderr[-3000:]
    ran_precise_bn = "Running PreciseBN for 2 iterations" in run.stdout + run.stderr
    assert ran_precise_bn == ("BN" in norm)
    ranks = [load_checkpoint(state / f"rank{r}.pth") for r in (0, 1)]
    assert all(r["ddp"] and r["world_size"] == 2 for r in ranks)
    assert_same(ranks[0]["model"], ranks[1]["model"], "rank 0 vs rank 1")

    seen = [read_batches(f"{tmp_path / 'batches'}.rank{r}") for r in (0, 1)]
    assert len(seen[0]) == len(seen[1]) == 3
    assert seen[0] != seen[1]
    stream = iter(ResumableTrainingSampler(6, 4, seed=3, rank=0, world_size=1))
    for iteration in range(3):
        expected = sorted(f"{index:06d}.jpg" for _, index in next(stream))
        got = sorted(name for r in (0, 1) for name, _ in seen[r][iteration])
        assert got == expected


# ----------------------------------------------------------------------------- soak
def test_soak_tool_reports_memory_growth(tmp_path):
    result = subprocess.run(
        [sys.executable, "-m", "d2_edwpose.tools.soak", "--num-images", "6", "--warmup", "2",
         "--max-growth", "1000", "--data-root", str(tmp_path / "images"), "--log-every", "3",
         "MODEL.DEVICE", "cpu"],
        capture_output=True, text=True, cwd=REPO_ROOT, env={**os.environ, **SINGLE_THREAD},
        timeout=600,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr[-3000:]
    summary = json.loads(result.stdout.strip().splitlines()[-1])
    assert summary["images"] == 6 and summary["warmup_images"] == 2
    assert summary["rss_after_warmup_mib"] > 0 and summary["rss_end_mib"] > 0
    start, end = summary["rss_after_warmup_mib"], summary["rss_end_mib"]
    assert summary["rss_growth_percent"] == pytest.approx(100 * (end - start) / start, abs=0.1)

    # Fewer images in the same folder (which keeps the 6 earlier files), and a limit any growth
    # reaches: the run covers exactly the images asked for, and fails.
    over_limit = subprocess.run(
        [sys.executable, "-m", "d2_edwpose.tools.soak", "--num-images", "3", "--warmup", "1",
         "--max-growth", "-1000", "--data-root", str(tmp_path / "images"), "MODEL.DEVICE", "cpu"],
        capture_output=True, text=True, cwd=REPO_ROOT, env={**os.environ, **SINGLE_THREAD},
        timeout=600,
    )  # fmt: skip
    assert over_limit.returncode == 1, over_limit.stderr[-3000:]
    summary = next(line for line in over_limit.stdout.splitlines() if line.startswith("{"))
    assert json.loads(summary)["images"] == 3
    assert "Resident memory grew by" in over_limit.stdout + over_limit.stderr
