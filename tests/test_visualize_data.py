"""tools.visualize_data: a dataset's annotations and the training loader's samples (augmented,
resized as the model sees them) drawn with the skeleton, left and right in their colours."""

import numpy as np
import pytest
from PIL import Image

from detectron2.data import Metadata

from d2_edwpose.data.keypoint_sets import SIDE_COLORS
from d2_edwpose.data.synthetic import generate_synthetic_keypoints
from d2_edwpose.tools import visualize_data

from conftest import write_config

pytestmark = pytest.mark.usefixtures("unregister_test_datasets")


@pytest.fixture(scope="module")
def people(tmp_path_factory):
    root = generate_synthetic_keypoints(tmp_path_factory.mktemp("people"), 2, 0, seed=2)
    return {
        "people": {
            "JSON_FILE": f"{root}/annotations/person_keypoints_train.json",
            "IMAGE_ROOT": f"{root}/train",
        }
    }


def _pixels_of(path, color):
    image = np.asarray(Image.open(path).convert("RGB")).astype(int)
    return int((np.abs(image - np.array(color)).sum(axis=2) < 30).sum())


def _side_pixels(path):
    return {side: _pixels_of(path, SIDE_COLORS[side]) for side in ("left", "right")}


def test_draws_the_annotations_with_sides_in_their_colours(people, tmp_path):
    config = write_config(tmp_path / "people.yaml", people, ["people"], [])
    written = visualize_data.main(
        ["--config-file", str(config), "--source", "annotation", "--output", str(tmp_path / "a")]
    )
    images = ["000000.jpg", "000001.jpg"]
    assert [p.name for p in written] == [f"{i:04d}_people_{n}" for i, n in enumerate(images)]
    for path, image in zip(written, images):  # at the image's own size
        source = f"{people['people']['IMAGE_ROOT']}/{image}"
        assert Image.open(path).size == Image.open(source).size
        pixels = _side_pixels(path)
        assert pixels["left"] > 100 and pixels["right"] > 100, pixels


def test_images_of_two_datasets_with_one_file_name_are_both_drawn(people, tmp_path):
    config = write_config(
        tmp_path / "twice.yaml", {**people, "again": people["people"]}, ["people", "again"], []
    )
    written = visualize_data.main(
        ["--config-file", str(config), "--source", "annotation", "--output", str(tmp_path / "a"),
         "--num-images", "4"]
    )  # fmt: skip
    assert len(written) == 4 and len(set(written)) == 4
    assert all(path.is_file() for path in written)


def test_draws_the_loaders_samples_at_the_models_input_size(people, tmp_path):
    config = write_config(tmp_path / "people.yaml", people, ["people"], [], SEED=0)
    written = visualize_data.main(
        ["--config-file", str(config), "--source", "dataloader", "--output", str(tmp_path / "d"),
         "--num-images", "3", "INPUT.RANDOM_FLIP", "horizontal"]
    )  # fmt: skip
    assert len(written) == 3 and all(p.suffix == ".png" for p in written)
    for path in written:
        assert Image.open(path).size == (640, 640)  # INPUT.FIXED_SIZE, drawn at scale 2
        pixels = _side_pixels(path)
        assert pixels["left"] > 100 and pixels["right"] > 100, pixels


def test_keypoints_and_limbs_take_the_colour_of_their_side():
    """Names with sides, and a pair of names without (the first of a pair is drawn left)."""
    names = ("head", "chest", "L_Hand", "R_Hand", "fin_a", "fin_b")
    metadata = Metadata(
        keypoint_names=names,
        keypoint_flip_map=(("L_Hand", "R_Hand"), ("fin_a", "fin_b")),
        keypoint_connection_rules=[("chest", "L_Hand", (0, 0, 0)), ("chest", "R_Hand", (0, 0, 0))],
    )
    points = [(100, 20), (100, 100), (40, 160), (160, 160), (40, 40), (160, 40)]
    keypoints = np.array([[x, y, 2] for x, y in points], dtype=float)
    visualizer = visualize_data.SidedKeypointVisualizer(np.zeros((200, 200, 3), np.uint8), metadata)
    image = visualizer.draw_and_connect_keypoints(keypoints).get_image().astype(int)

    colors = {"background": (0, 0, 0), **SIDE_COLORS}

    def color_at(x, y):
        return min(colors, key=lambda name: np.abs(image[y, x] - colors[name]).sum())

    sides = ["centre", None, "left", "right", "left", "right"]  # the chest is under its limbs
    for (x, y), side in zip(points, sides):
        if side:
            assert color_at(x, y) == side
    # A limb with one end on a side (chest -> L_Hand) is of that side; at its midpoint:
    assert (color_at(70, 130), color_at(130, 130)) == ("left", "right")
