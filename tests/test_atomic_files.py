"""The atomic writer: a file holds its previous content or the whole new one, never a part."""
import cv2
import numpy as np
import pytest

from d2_edwpose.utils.atomic_files import atomic_open, atomic_path


def test_atomic_write_leaves_the_previous_file_when_the_writer_fails(tmp_path):
    target = tmp_path / "last_checkpoint"
    target.write_text("model_0000002.pth")
    with pytest.raises(RuntimeError, match="died"):
        with atomic_open(str(target), "w") as f:
            f.write("model_0000005")
            raise RuntimeError("died half-way")
    assert target.read_text() == "model_0000002.pth"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["last_checkpoint"]

    with atomic_open(str(target), "w") as f:
        f.write("model_0000005.pth")
    assert target.read_text() == "model_0000005.pth"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["last_checkpoint"]


def test_a_writer_by_file_name_gets_the_suffix_and_failures_leave_nothing(tmp_path):
    target = tmp_path / "drawn.png"
    image = np.full((4, 6, 3), 200, np.uint8)
    with atomic_path(target) as temporary:
        assert temporary.endswith(".png") and not target.exists()
        assert cv2.imwrite(temporary, image)  # OpenCV picks PNG by the suffix
    assert (cv2.imread(str(target)) == image).all()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["drawn.png"]

    with pytest.raises(OSError, match="could not"):
        with atomic_path(target) as temporary:
            cv2.imwrite(temporary, np.zeros((4, 6, 3), np.uint8))
            raise OSError("the writer could not finish")
    assert (cv2.imread(str(target)) == image).all()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["drawn.png"]


def test_the_folder_of_the_file_is_created(tmp_path):
    target = tmp_path / "export" / "models" / "model.onnx"
    with atomic_open(target, "wb") as f:
        f.write(b"graph")
    assert target.read_bytes() == b"graph"
    assert sorted(p.name for p in target.parent.iterdir()) == ["model.onnx"]
