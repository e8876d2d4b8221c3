"""The image scan before the first iteration (d2_edwpose.data.image_scan): it finds every image
that detectron2 would fail on, and only those, before a run starts; caches what it found;
stops the run listing the bad entries, or trains and evaluates without them."""

import json
import logging
import os
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from detectron2.data import DatasetCatalog
from detectron2.data.datasets import register_coco_instances
from detectron2.data.datasets.builtin_meta import _get_builtin_metadata
from detectron2.data.detection_utils import check_image_size, read_image
from detectron2.engine import HookBase

from d2_edwpose.data.checks import SampleLoadError
from d2_edwpose.data.image_scan import ImageScan, ImageScanError, scan_images
from d2_edwpose.data.synthetic import generate_synthetic_keypoints
from d2_edwpose.data.synthetic.generation import split_paths
from d2_edwpose.engine import Trainer

from conftest import write_config
from test_real_data import COCO_JSON
from test_reliability import (  # noqa: F401  (one_thread: a fixture)
    SINGLE_THREAD,
    WITH_FAULTS,
    demo_cfg,
    one_thread,
    read_batches,
)
from test_train_net import run_train_net

pytestmark = pytest.mark.usefixtures("unregister_test_datasets")

EXIF_ORIENTATION = 0x0112
# The entries make_bad_copy adds, by what is wrong with them; and those detectron2 reads.
BAD_KINDS = ("missing", "truncated", "mismatched", "exif_raw_size", "swapped", "not_an_image")
GOOD_KINDS = ("exif_rotated", "trailing_data")


def make_bad_copy(json_file, image_root, output):
    """A copy of a COCO keypoints dataset (all its images, which must be good) with one more
    image per kind of BAD_KINDS and GOOD_KINDS, each made from one of its images, with that
    image's annotations:

    * missing: no file; truncated: the first 60% of a JPEG; not_an_image: a text file;
    * mismatched: the record's height 8 pixels off; swapped: the record's width and height;
    * exif_rotated: the pixels rotated a quarter turn and EXIF orientation 6, which rotates
      them back, so that detectron2 reads the original image (the record's size is right);
    * exif_raw_size: the same file, with the size of its rotated pixels in the record;
    * trailing_data: bytes after the JPEG's end (as some cameras write), which decodes.

    Returns:
        (json file, image folder, {kind: image record}) of the copy.
    """
    coco = json.loads(Path(json_file).read_text())
    images_out = Path(output) / "images"
    shutil.copytree(image_root, images_out)
    sources = list(coco["images"])
    next_image_id = max(image["id"] for image in sources) + 1
    next_annotation_id = max(a["id"] for a in coco["annotations"]) + 1
    added = {}
    for index, kind in enumerate(BAD_KINDS + GOOD_KINDS):
        source = sources[index % len(sources)]
        record = {**source, "id": next_image_id + index, "file_name": f"{kind}.jpg"}
        original = images_out / source["file_name"]
        path = images_out / record["file_name"]
        if kind in ("truncated",):
            data = original.read_bytes()
            path.write_bytes(data[: len(data) * 6 // 10])
        elif kind == "not_an_image":
            path.write_text("not an image")
        elif kind == "trailing_data":
            path.write_bytes(original.read_bytes() + bytes(64))
        elif kind in ("exif_rotated", "exif_raw_size"):
            exif = Image.Exif()
            exif[EXIF_ORIENTATION] = 6  # detectron2: ROTATE_270, undoing the ROTATE_90 below
            rotated = Image.open(original).transpose(Image.Transpose.ROTATE_90)
            rotated.save(path, exif=exif.tobytes(), quality=95)
            if kind == "exif_raw_size":
                record["width"], record["height"] = rotated.size
        elif kind != "missing":
            shutil.copyfile(original, path)
        if kind == "mismatched":
            record["height"] += 8
        elif kind == "swapped":
            record["width"], record["height"] = source["height"], source["width"]
        coco["images"].append(record)
        for annotation in [a for a in coco["annotations"] if a["image_id"] == source["id"]]:
            coco["annotations"].append(
                {**annotation, "id": next_annotation_id, "image_id": record["id"]}
            )
            next_annotation_id += 1
        added[kind] = record
    out_json = Path(output) / "annotations.json"
    out_json.write_text(json.dumps(coco))
    return out_json, images_out, added


def register(name, json_file, image_root):
    register_coco_instances(
        name, _get_builtin_metadata("coco_person"), str(json_file), str(image_root)
    )
    return name


@pytest.fixture(scope="module")
def synthetic_root(tmp_path_factory):
    return generate_synthetic_keypoints(
        tmp_path_factory.mktemp("synthetic"), num_train=4, num_val=2, seed=3
    )


@pytest.fixture
def bad_synthetic(synthetic_root, tmp_path):
    """(dataset name, {kind: record}) of make_bad_copy of the synthetic training images."""
    json_file, image_root, added = make_bad_copy(
        *split_paths(synthetic_root, "train"), tmp_path / "bad"
    )
    return register(f"test_bad_synthetic_{tmp_path.name}", json_file, image_root), added


def detectron2_reads(record):
    """Whether detectron2's DatasetMapper reads the record's image: its read_image and
    check_image_size."""
    try:
        check_image_size(record, read_image(record["file_name"], format="BGR"))
    except Exception:
        return False
    return True


def bad_by_file(problems, dataset_dicts):
    return {Path(dataset_dicts[i]["file_name"]).name: problem for i, problem in problems.items()}


# ----------------------------------------------------------------------------- the scan
def test_reports_what_detectron2_rejects_and_only_that(bad_synthetic, tmp_path):
    name, added = bad_synthetic
    dataset_dicts = DatasetCatalog.get(name)
    result = scan_images(dataset_dicts, cache_file=str(tmp_path / "cache.npz"))
    found = bad_by_file(result.problems, dataset_dicts)

    for record in dataset_dicts:
        assert (Path(record["file_name"]).name not in found) == detectron2_reads(record), record
    assert sorted(found) == sorted(f"{kind}.jpg" for kind in BAD_KINDS)
    assert found["missing.jpg"] == "missing: no such file"
    assert found["truncated.jpg"].startswith(
        "truncated or corrupt: OSError: image file is truncated"
    )
    assert found["not_an_image.jpg"].startswith("not an image Pillow can read")
    width, height = added["mismatched"]["width"], added["mismatched"]["height"]
    assert found["mismatched.jpg"] == (
        f"size: detectron2 reads the image as {width}x{height - 8} (width x height), the "
        f"record says {width}x{height}"
    )
    assert found["swapped.jpg"].endswith("width and height are swapped in the record")
    raw = added["exif_raw_size"]
    assert found["exif_raw_size.jpg"] == (
        f"size: the record says {raw['width']}x{raw['height']}, the file's size before its EXIF "
        "orientation 6, which detectron2 applies: it reads the image as "
        f"{raw['height']}x{raw['width']} (width x height); set width {raw['height']}, height "
        f"{raw['width']}"
    )
    assert result.num_files == len(dataset_dicts) and result.num_read == result.num_files


def test_damaged_pixel_data_needs_the_full_decode(synthetic_root, tmp_path):
    """Files with an intact header and end but damaged data: the header scan passes them, the
    full decode reports them. detectron2 fails on the JPEG (a Huffman table overwritten), and
    reads the PNG (a byte of its compressed pixels flipped) without an error, partly decoded."""
    source = Image.open(sorted(Path(split_paths(synthetic_root, "train")[1]).iterdir())[0])
    jpeg, png = tmp_path / "damaged.jpg", tmp_path / "damaged.png"
    source.save(jpeg, quality=95)
    data = bytearray(jpeg.read_bytes())
    table = data.index(b"\xff\xc4") + 5  # the 16 code counts of the first Huffman table
    data[table : table + 16] = b"\xff" * 16
    jpeg.write_bytes(bytes(data))
    source.save(png)
    data = bytearray(png.read_bytes())
    data[data.index(b"IDAT") + 40] ^= 0xFF
    png.write_bytes(bytes(data))
    records = [
        {"file_name": str(path), "width": source.width, "height": source.height, "image_id": i}
        for i, path in enumerate((jpeg, png))
    ]

    assert [detectron2_reads(record) for record in records] == [False, True]
    assert scan_images(records).problems == {}
    assert scan_images(records, full_decode=True).problems == {
        0: "truncated or corrupt: OSError: broken data stream when reading image file",
        1: "truncated or corrupt: OSError: broken data stream when reading image file",
    }


def test_second_scan_reads_nothing_and_a_changed_file_is_read_again(synthetic_root, tmp_path):
    image_root = tmp_path / "read_only_images"
    shutil.copytree(split_paths(synthetic_root, "train")[1], image_root)
    paths = sorted(image_root.iterdir())
    sizes = [Image.open(p).size for p in paths]
    records = [
        {"file_name": str(p), "width": w, "height": h, "image_id": i}
        for i, (p, (w, h)) in enumerate(zip(paths, sizes))
    ]
    image_root.chmod(0o555)  # read-only (not for root, but nothing may be written there)
    cache = tmp_path / "cache" / "scan.npz"
    try:
        first = scan_images(records, cache_file=str(cache))
        second = scan_images(records, cache_file=str(cache))
    finally:
        image_root.chmod(0o755)
    assert first.problems == second.problems == {}
    assert (first.num_read, second.num_read) == (len(records), 0)
    assert sorted(image_root.iterdir()) == paths
    written = cache.stat().st_mtime_ns

    # An image replaced by one of another size: read again, and now a mismatch.
    Image.open(paths[0]).resize((20, 10)).save(paths[0])
    third = scan_images(records, cache_file=str(cache))
    assert third.num_read == 1
    assert third.problems[0].startswith("size: detectron2 reads the image as 20x10")
    assert cache.stat().st_mtime_ns > written
    # The record corrected (an edited annotation file): no image is read again.
    records[0].update(width=20, height=10)
    fourth = scan_images(records, cache_file=str(cache))
    assert (fourth.num_read, fourth.problems) == (0, {})
    # A part of the set (a training set without its images without people) keeps the others.
    assert scan_images(records[1:], cache_file=str(cache)).num_read == 0
    assert scan_images(records, cache_file=str(cache)).num_read == 0


def test_a_file_touched_or_with_only_a_new_change_time_is_read_again(tmp_path):
    """A cache entry holds while the file's size, modification and change times are those it
    was read with: a file touched (same size, a new mtime) is read again, and so is one edited
    in place with its mtime restored (exiftool -P), which only its change time gives away."""
    image = tmp_path / "image.jpg"
    Image.new("RGB", (12, 8)).save(image)
    records = [{"file_name": str(image), "width": 12, "height": 8, "image_id": 0}]
    cache = str(tmp_path / "scan.npz")
    assert [scan_images(records, cache_file=cache).num_read for _ in range(2)] == [1, 0]

    before = image.stat()
    os.utime(image, ns=(before.st_atime_ns, before.st_mtime_ns + 10**9))
    assert [scan_images(records, cache_file=cache).num_read for _ in range(2)] == [1, 0]

    before = image.stat()
    time.sleep(0.05)  # past the file system's clock granularity, so that the change time moves
    os.utime(image, ns=(before.st_atime_ns, before.st_mtime_ns))
    after = image.stat()
    assert (after.st_size, after.st_mtime_ns) == (before.st_size, before.st_mtime_ns)
    assert after.st_ctime_ns != before.st_ctime_ns
    assert [scan_images(records, cache_file=cache).num_read for _ in range(2)] == [1, 0]


@pytest.mark.parametrize("damage", ["truncated", "not_a_cache"])
def test_a_damaged_cache_is_a_warning_and_rewritten(tmp_path, caplog, damage):
    image = tmp_path / "image.jpg"
    Image.new("RGB", (12, 8)).save(image)
    records = [{"file_name": str(image), "width": 12, "height": 8, "image_id": 0}]
    cache = tmp_path / "scan.npz"
    scan_images(records, cache_file=str(cache))
    if damage == "truncated":
        cache.write_bytes(cache.read_bytes()[:100])
    else:
        cache.write_text(json.dumps({"files": {str(image): [1, 2, 3, 12, 8, 0]}}))
    with caplog.at_level(logging.WARNING, logger="d2_edwpose.data.image_scan"):
        result = scan_images(records, cache_file=str(cache))
    assert (result.num_read, result.problems) == (1, {})
    assert f"Ignoring the image-scan cache {cache}, which cannot be read: " in caplog.text
    assert scan_images(records, cache_file=str(cache)).num_read == 0


def test_an_unwritable_cache_is_a_warning(synthetic_root, tmp_path, caplog):
    image = next(Path(split_paths(synthetic_root, "train")[1]).iterdir())
    width, height = Image.open(image).size
    records = [{"file_name": str(image), "width": width, "height": height + 1, "image_id": 7}]
    not_a_folder = tmp_path / "file"
    not_a_folder.write_text("")
    with caplog.at_level(logging.WARNING, logger="d2_edwpose.data.image_scan"):
        result = scan_images(records, cache_file=str(not_a_folder / "scan.npz"))
    assert list(result.problems) == [0]
    assert "Cannot write the image-scan cache" in caplog.text
    assert "DATASETS.IMAGE_SCAN.CACHE_DIR" in caplog.text


def test_bad_entries_are_an_error_listing_them_or_left_out_with_one_warning(tmp_path, caplog):
    good = tmp_path / "good.jpg"
    Image.new("RGB", (12, 8)).save(good)
    records = [{"file_name": str(good), "width": 12, "height": 8, "image_id": 0}] + [
        {"file_name": str(tmp_path / f"gone{i}.jpg"), "width": 12, "height": 8, "image_id": i}
        for i in range(1, 41)
    ]
    kwargs = dict(cache_dir=str(tmp_path / "cache"), report_dir=str(tmp_path / "report"))
    report = tmp_path / "report" / "frames.json"

    with pytest.raises(ImageScanError) as error:
        ImageScan(**kwargs)(records, ["frames"])
    message = str(error.value)
    assert message.startswith("40 of the 41 images of dataset 'frames' cannot be read")
    assert f"  {tmp_path / 'gone1.jpg'} (image_id 1): missing: no such file" in message
    assert "gone30.jpg" in message and "gone31.jpg" not in message
    assert "... and 10 more" in message and f"All 40 are listed in {report}" in message
    assert "DATASETS.IMAGE_SCAN.BAD_ENTRIES 'drop'" in message
    listed = json.loads(report.read_text())["bad"]
    assert [entry["image_id"] for entry in listed] == list(range(1, 41))
    assert listed[0] == {
        "file_name": str(tmp_path / "gone1.jpg"), "image_id": 1, "problem": "missing: no such file"
    }  # fmt: skip

    drop = ImageScan(bad_entries="drop", **kwargs)
    with caplog.at_level(logging.INFO, logger="d2_edwpose.data.image_scan"):
        assert drop(records, ["frames"]) == records[:1]
        assert drop(records, ["frames"]) == records[:1]
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1
    assert "40 of the 41 images of dataset 'frames'" in warnings[0] and str(report) in warnings[0]
    assert "1 remain" in warnings[0]


def test_an_unknown_bad_entries_value_names_the_key():
    with pytest.raises(ValueError, match=r"DATASETS.IMAGE_SCAN.BAD_ENTRIES='skip' is invalid"):
        ImageScan.from_config(demo_cfg("DATASETS.IMAGE_SCAN.BAD_ENTRIES", "skip"))


# ----------------------------------------------------------------------------- in a run
@pytest.fixture
def package_log(caplog):
    """The d2_edwpose loggers' records, each once (setup_logger(name="d2_edwpose"), if it ran
    in this process, stopped their propagation to caplog's handler)."""
    package_logger = logging.getLogger("d2_edwpose")
    own_handler = not package_logger.propagate
    if own_handler:
        package_logger.addHandler(caplog.handler)
    with caplog.at_level(logging.INFO, logger="d2_edwpose"):
        yield caplog
    if own_handler:
        package_logger.removeHandler(caplog.handler)


def run_cfg(name, tmp_path, *opts):
    return demo_cfg(
        "DATASETS.TRAIN", (name,), "DATASETS.TEST", (name,), "OUTPUT_DIR", tmp_path / "run",
        "DATASETS.IMAGE_SCAN.CACHE_DIR", tmp_path / "cache", "SOLVER.IMS_PER_BATCH", 2,
        "SOLVER.MAX_ITER", 1, "SOLVER.WARMUP_ITERS", 0, "SOLVER.STEPS", (), "SEED", 1,
        "DATALOADER.NUM_WORKERS", 0, "TEST.PRECISE_BN.ENABLED", False, *opts,
    )  # fmt: skip


def test_a_missing_real_image_stops_train_net_before_the_first_iteration(coco_mini_root, tmp_path):
    """The real COCO images with one deleted: train_net.py stops before training, naming it."""
    images = tmp_path / "val2017"
    shutil.copytree(coco_mini_root / "val2017", images)
    (images / "000000000785.jpg").unlink()
    datasets = {
        "coco_mini": {"JSON_FILE": str(coco_mini_root / COCO_JSON), "IMAGE_ROOT": str(images)}
    }
    config = write_config(
        tmp_path / "coco_mini.yaml", datasets, ["coco_mini"], [], OUTPUT_DIR=str(tmp_path / "run")
    )
    run = run_train_net(
        ["--config-file", str(config), "DATASETS.IMAGE_SCAN.CACHE_DIR", str(tmp_path / "cache")],
        {}, tmp_path,
    )  # fmt: skip
    log = run.stdout + run.stderr
    assert run.returncode != 0
    assert "Starting training" not in log
    assert (
        f"ImageScanError: 1 of the 4 images of dataset 'coco_mini' cannot be read as their "
        f"records say:\n  {images / '000000000785.jpg'} (image_id 785): missing: no such file"
    ) in log
    report = json.loads((tmp_path / "run" / "image_scan" / "coco_mini.json").read_text())
    assert [entry["image_id"] for entry in report["bad"]] == [785]


def test_bad_real_images_stop_training_or_train_and_evaluate_without_them(
    coco_mini_root, tmp_path, package_log, one_thread
):
    json_file, image_root, added = make_bad_copy(
        coco_mini_root / COCO_JSON, coco_mini_root / "val2017", tmp_path / "data"
    )
    name = register("test_bad_coco_mini", json_file, image_root)
    with pytest.raises(ImageScanError) as error:
        Trainer(run_cfg(name, tmp_path))
    for kind in BAD_KINDS:
        assert f"{kind}.jpg (image_id {added[kind]['id']}): " in str(error.value)
    for kind in GOOD_KINDS:
        assert f"{kind}.jpg" not in str(error.value)

    trainer = Trainer(run_cfg(name, tmp_path, "DATASETS.IMAGE_SCAN.BAD_ENTRIES", "drop"))
    kept = 4 + len(GOOD_KINDS)
    assert len(trainer.data_loader.dataset) == kept
    trainer.resume_or_load(resume=False)
    trainer.train()  # one iteration, then the evaluation of the test set
    # One warning, though the dataset is scanned three times (the test set before training,
    # the training set, the test set for its evaluation), all with the same bad entries.
    (dropped,) = [r.getMessage() for r in package_log.records if r.levelno == logging.WARNING
                  and "leaving them out" in r.getMessage()]  # fmt: skip
    assert dropped.startswith(
        f"{len(BAD_KINDS)} of the {kept + len(BAD_KINDS)} images of dataset '{name}' cannot be "
        "read as their records say; leaving them out (DATASETS.IMAGE_SCAN.BAD_ENTRIES 'drop'), "
        f"{kept} remain. All {len(BAD_KINDS)} are listed in "
        f"{tmp_path / 'run' / 'image_scan' / name}.json."
    )
    messages = [r.getMessage() for r in package_log.records if r.name.startswith("d2_edwpose")]
    evaluation = [m for m in messages if m.startswith("Evaluating ")]
    assert evaluation == [
        f"Evaluating {kept} of the {kept + len(BAD_KINDS)} images of '{name}': the other "
        f"{len(BAD_KINDS)} were not in the test loader (the image scan leaves bad images out "
        "with DATASETS.IMAGE_SCAN.BAD_ENTRIES 'drop'). The AP below is over these images only, "
        "not comparable with an AP over the whole set."
    ]
    assert "AP" in trainer._last_eval_results["keypoints"]  # DefaultTrainer's


class _RemoveFolderAfter(HookBase):
    """Moves an image folder away after an iteration: files that vanish mid-run."""

    def __init__(self, iteration, folder):
        self.iteration, self.folder = iteration, Path(folder)

    def after_step(self):
        if self.trainer.iter == self.iteration:
            self.folder.rename(self.folder.with_name("moved"))


def test_images_gone_mid_run_stop_it_naming_one_and_resume_once_back(
    synthetic_root, tmp_path, one_thread
):
    json_file, source_images = split_paths(synthetic_root, "train")
    images = tmp_path / "images"
    shutil.copytree(source_images, images)
    name = register("test_vanishing_images", json_file, images)
    cfg = run_cfg(
        name, tmp_path, "DATASETS.TEST", (), "SOLVER.MAX_ITER", 3, "SOLVER.CHECKPOINT_PERIOD", 1
    )
    trainer = Trainer(cfg)
    trainer.register_hooks([_RemoveFolderAfter(0, images)])
    trainer.resume_or_load(resume=False)
    vanished = rf"Cannot load the image '{re.escape(str(images))}/\d+\.jpg' \(image_id \d+\)"
    with pytest.raises(SampleLoadError, match=vanished):
        trainer.train()
    assert (tmp_path / "run" / "last_checkpoint").read_text() == "model_0000000.pth"

    (tmp_path / "moved").rename(images)
    resumed = Trainer(cfg)
    resumed.resume_or_load(resume=True)
    assert resumed.start_iter == 1
    resumed.train()
    assert (tmp_path / "run" / "last_checkpoint").read_text() == "model_final.pth"


@pytest.mark.slow
def test_two_processes_scan_once_and_keep_the_same_images(synthetic_root, tmp_path):
    """train_net.py --num-gpus 2 (CPU processes) on make_bad_copy of the synthetic images: the
    first process scans, both stop with the error, or both train on the same kept images."""
    json_file, image_root, added = make_bad_copy(
        *split_paths(synthetic_root, "train"), tmp_path / "bad"
    )
    config = write_config(
        tmp_path / "bad.yaml",
        {"bad": {"JSON_FILE": str(json_file), "IMAGE_ROOT": str(image_root)}}, ["bad"], ["bad"],
        SOLVER={"IMS_PER_BATCH": 4, "MAX_ITER": 3, "WARMUP_ITERS": 0, "STEPS": []},
        DATALOADER={"NUM_WORKERS": 0}, TEST={"PRECISE_BN": {"ENABLED": False}}, SEED=5,
    )  # fmt: skip

    def train(output, *opts):
        return subprocess.run(
            [sys.executable, str(WITH_FAULTS), "--config-file", str(config), "--num-gpus", "2",
             "--dist-url", "auto", "OUTPUT_DIR", str(output),
             "DATASETS.IMAGE_SCAN.CACHE_DIR", str(tmp_path / "cache"), *opts],
            capture_output=True, text=True, cwd=tmp_path, timeout=600,
            env={**os.environ, **SINGLE_THREAD,
                 "D2_EDWPOSE_TEST_BATCH_LOG": str(output / "batches")},
        )  # fmt: skip

    stopped = train(tmp_path / "error")
    assert stopped.returncode != 0
    assert "ImageScanError: 6 of the 12 images of dataset 'bad'" in stopped.stderr
    assert "Starting training" not in stopped.stdout + stopped.stderr

    dropped = train(tmp_path / "drop", "DATASETS.IMAGE_SCAN.BAD_ENTRIES", "drop")
    assert dropped.returncode == 0, dropped.stderr[-3000:]
    logs = [(tmp_path / "drop" / name).read_text() for name in ("log.txt", "log.txt.rank1")]
    # The test set before training, the training set, the test set for its evaluation.
    assert logs[0].count("Scanned the 12 images of bad") == 3
    assert "Scanned the" not in logs[1] and "6 remain" in logs[1]
    drawn = [name for r in (0, 1) for batch in read_batches(tmp_path / "drop" / f"batches.rank{r}")
             for name, _ in batch]  # fmt: skip
    assert len(drawn) == 12 and not {f"{kind}.jpg" for kind in BAD_KINDS} & set(drawn)


# ----------------------------------------------------------------------------- speed
@pytest.mark.slow
def test_scan_speed_of_generated_images(tmp_path):
    """Reports (does not assert) the scan time of D2_EDWPOSE_SCAN_IMAGES (default 3000) small
    generated JPEGs, uncached (their files in the OS page cache, as just written) and cached:

        D2_EDWPOSE_SCAN_IMAGES=118287 .venv/bin/python -m pytest -s -m slow \\
            tests/test_image_scan.py -k speed
    """
    count = int(os.environ.get("D2_EDWPOSE_SCAN_IMAGES", 3000))
    rng = np.random.default_rng(0)
    folder = tmp_path / "images"
    folder.mkdir()
    records = []
    for index in range(count):
        width, height = (int(v) for v in rng.integers(48, 97, 2))
        path = folder / f"{index:06d}.jpg"
        Image.fromarray(rng.integers(0, 256, (height, width, 3), np.uint8)).save(path)
        records.append(
            {"file_name": str(path), "width": width, "height": height, "image_id": index}
        )
    cache = str(tmp_path / "cache.npz")
    timings = {}
    for label, kwargs in (
        ("uncached", {"cache_file": cache}),
        ("cached", {"cache_file": cache}),
        ("full decode, uncached", {"full_decode": True}),
    ):
        start = time.perf_counter()
        result = scan_images(records, **kwargs)
        timings[label] = time.perf_counter() - start
        assert result.problems == {}
    print(f"\nimage scan of {count} generated JPEGs on {os.cpu_count()} CPUs: " + ", ".join(
        f"{label} {seconds:.2f} s" for label, seconds in timings.items()
    ))
