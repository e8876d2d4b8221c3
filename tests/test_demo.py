"""The inference demo on a user's images, folders and videos."""
import re
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch
import torchvision

from d2_edwpose.data.synthetic import generate_synthetic_keypoints
from d2_edwpose.engine.visualization import predict_and_draw_image
from d2_edwpose.tools import demo

from conftest import REPO_ROOT

CONFIG = str(REPO_ROOT / "configs" / "cpu_demo_keypoint_rcnn_mv3_fpn_320_edw.yaml")
# An untrained model still draws whatever it detects; a low threshold makes it draw something.
OPTS = ["--confidence-threshold", "0.0", "MODEL.WEIGHTS", ""]


@pytest.fixture(scope="module")
def images(tmp_path_factory):
    root = generate_synthetic_keypoints(tmp_path_factory.mktemp("synthetic"), 0, 2, seed=5)
    return sorted(Path(root, "val").glob("*.jpg"))


def test_images_and_folders_are_drawn_at_their_size(images, tmp_path):
    out = tmp_path / "out"
    written = demo.main(
        [
            "--config-file",
            CONFIG,
            "--input",
            str(images[0]),
            str(images[0].parent),
            "--output",
            str(out),
            *OPTS,
        ]
    )
    assert [p.name for p in written] == [images[0].name] + [p.name for p in images]
    nothing = tmp_path / "nothing"  # same pipeline, every detection below the threshold
    demo.main(
        ["--config-file", CONFIG, "--input", str(images[0].parent), "--output", str(nothing),
         "--confidence-threshold", "1.01", "MODEL.WEIGHTS", ""]
    )  # fmt: skip
    for source in images:
        drawn = cv2.imread(str(out / source.name))
        undrawn = cv2.imread(str(nothing / source.name))
        assert drawn.shape == undrawn.shape == cv2.imread(str(source)).shape
        changed = np.abs(drawn.astype(int) - undrawn.astype(int)).max(axis=2) > 40
        assert changed.sum() > 200  # boxes and skeletons were drawn


def test_video_frames_are_all_written_and_fps_reported(images, tmp_path, capsys):
    first = cv2.imread(str(images[0]))
    height, width = (s // 2 * 2 for s in first.shape[:2])  # MPEG-4 frames have even sizes
    video = tmp_path / "clip.avi"
    writer = cv2.VideoWriter(str(video), cv2.VideoWriter_fourcc(*"MJPG"), 5, (width, height))
    for path in images + images:
        writer.write(cv2.resize(cv2.imread(str(path)), (width, height)))
    writer.release()

    (written,) = demo.main(
        ["--config-file", CONFIG, "--input", str(video), "--output", str(tmp_path / "out"), *OPTS]
    )
    assert written.name == "clip.mp4"
    capture = cv2.VideoCapture(str(written))
    assert int(capture.get(cv2.CAP_PROP_FRAME_COUNT)) == 2 * len(images)
    assert (
        int(capture.get(cv2.CAP_PROP_FRAME_WIDTH)),
        int(capture.get(cv2.CAP_PROP_FRAME_HEIGHT)),
    ) == (width, height)
    capture.release()
    printed = capsys.readouterr().out
    assert re.search(rf"clip.avi: {2 * len(images)} frames, [0-9.]+ FPS", printed), printed


def test_bad_inputs_are_named(tmp_path):
    with pytest.raises(FileNotFoundError, match="nothing.jpg"):
        demo.collect_inputs([str(tmp_path / "nothing.jpg")])
    notes = tmp_path / "notes.txt"
    notes.write_text("not an image")
    with pytest.raises(ValueError, match="unknown file type '.txt'"):
        demo.collect_inputs([str(notes)])
    fake = tmp_path / "broken.jpg"
    fake.write_bytes(b"not a jpeg")
    with pytest.raises(ValueError, match="broken.jpg: not a readable image"):
        predict_and_draw_image(None, None, fake, tmp_path / "drawn.jpg")


def test_outputs_never_overwrite_inputs_or_each_other(images, tmp_path):
    folder = tmp_path / "photos"
    folder.mkdir()
    photo = folder / images[0].name
    photo.write_bytes(images[0].read_bytes())
    original = photo.read_bytes()
    with pytest.raises(ValueError, match="would overwrite the input"):
        demo.main(["--config-file", CONFIG, "--input", str(folder), "--output", str(folder), *OPTS])
    assert photo.read_bytes() == original
    video = tmp_path / "clip.mp4"
    video.write_bytes(b"")
    with pytest.raises(ValueError, match="clip.mp4 would overwrite the input"):
        demo.output_paths([], [video], tmp_path)
    # Two different files of the same name would be drawn to the same output.
    with pytest.raises(ValueError, match=f"would both be drawn to .*{images[0].name}"):
        demo.output_paths([images[0], photo], [], tmp_path / "out")
    assert list((tmp_path / "out").glob("*")) == []  # checked before anything is run


def test_weights_of_another_model_or_no_file_are_errors_naming_the_key(tmp_path):
    missing, out = str(tmp_path / "model_final.pth"), str(tmp_path / "out")
    args = ["--config-file", CONFIG, "--input", str(tmp_path), "--output", out]
    with pytest.raises(FileNotFoundError, match="MODEL.WEIGHTS="):
        demo.main([*args, "MODEL.WEIGHTS", missing])
    # Another network's weights: detectron2's DefaultPredictor would only log them as skipped
    # and run with random ones.
    torch.save({"model": torchvision.models.resnet18(weights=None).state_dict()}, missing)
    with pytest.raises(ValueError, match="does not fit the model"):
        demo.main([*args, "MODEL.WEIGHTS", missing])
