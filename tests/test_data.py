"""The data path: detectron2's loaders on real COCO and on synthetic data, flip and resize."""
import copy

import numpy as np
import torch

from detectron2.data import DatasetCatalog, DatasetMapper
from detectron2.data import detection_utils as utils
from detectron2.data import transforms as T
from detectron2.data.datasets.builtin_meta import COCO_PERSON_KEYPOINT_NAMES

from d2_edwpose.data.synthetic import generate_synthetic_keypoints, register_synthetic_keypoints
from d2_edwpose.engine import Trainer
from d2_edwpose.modeling.meta_arch import _scale_instances

from conftest import demo_cfg


def mirrored(name):
    """The joint a horizontal mirror image shows in place of ``name``."""
    for side, other in (("left_", "right_"), ("right_", "left_")):
        if name.startswith(side):
            return other + name[len(side) :]
    return name


FLIP = {
    i: COCO_PERSON_KEYPOINT_NAMES.index(mirrored(n))
    for i, n in enumerate(COCO_PERSON_KEYPOINT_NAMES)
}


def test_flip_then_fixed_resize_maps_boxes_and_keypoints(tmp_path, restore_synthetic_registration):
    root = generate_synthetic_keypoints(tmp_path, num_train=2, num_val=0, seed=3)
    register_synthetic_keypoints(root)
    (record, *_) = DatasetCatalog.get("synthetic_keypoints_train")
    names = ("synthetic_keypoints_train",)
    hflip_indices = utils.create_keypoint_hflip_indices(names)
    mapper = DatasetMapper(
        is_train=True,
        augmentations=[T.RandomFlip(prob=1.0)],
        image_format="RGB",
        use_keypoint=True,
        keypoint_hflip_indices=hflip_indices,
    )
    height, width = record["height"], record["width"]
    original = utils.read_image(record["file_name"], format="RGB")
    mapped = mapper(dict(record))
    image = mapped["image"].permute(1, 2, 0).numpy()
    assert np.array_equal(image, original[:, ::-1])

    instances = _scale_instances(mapped["instances"], (320, 320))
    sx, sy = 320 / width, 320 / height
    people = [a for a in record["annotations"] if a["iscrowd"] == 0]
    assert len(instances) == len(people) > 0
    for person, box, keypoints in zip(
        people, instances.gt_boxes.tensor, instances.gt_keypoints.tensor
    ):
        x, y, w, h = person["bbox"]
        expected_box = torch.tensor([(width - x - w) * sx, y * sy, (width - x) * sx, (y + h) * sy])
        assert torch.allclose(box, expected_box, atol=1e-3)
        source = np.asarray(person["keypoints"], dtype=np.float32).reshape(17, 3)
        for k in range(17):
            sx_k, sy_k, v = source[FLIP[k]]  # the flipped person's left joint was the right one
            if v == 0:
                assert keypoints[k, 2] == 0
                continue
            # detectron2's loader already added 0.5 (pixel index -> continuous coordinates).
            expected = torch.tensor([(width - sx_k) * sx, sy_k * sy, v])
            assert torch.allclose(keypoints[k], expected, atol=1e-3), (k, keypoints[k], expected)

    # Flipping twice gives back the original annotations, labels included.
    flip = T.TransformList([T.HFlipTransform(width)])
    for person in people:
        once = utils.transform_instance_annotations(
            copy.deepcopy(person), flip, (height, width), keypoint_hflip_indices=hflip_indices
        )
        twice = utils.transform_instance_annotations(
            once, flip, (height, width), keypoint_hflip_indices=hflip_indices
        )
        source = np.reshape(person["keypoints"], (17, 3))
        labelled = source[:, 2] > 0
        assert np.array_equal(twice["keypoints"][:, 2], source[:, 2])
        assert np.allclose(twice["keypoints"][labelled], source[labelled], atol=1e-3)


def test_trains_a_few_iterations_on_real_coco(coco_mini_dataset, tmp_path):
    name = coco_mini_dataset
    records = DatasetCatalog.get(name)
    assert len(records) == 4
    assert any(
        not any(a["keypoints"][2::3]) for r in records for a in r["annotations"]
    ), "the file has people with 0 keypoints"
    assert all(
        isinstance(a["segmentation"], list)
        for r in records
        for a in r["annotations"]
        if not a["iscrowd"]
    )

    cfg = demo_cfg(
        "DATASETS.TRAIN", (name,), "DATASETS.TEST", (), "OUTPUT_DIR", str(tmp_path),
        "SOLVER.IMS_PER_BATCH", 2, "SOLVER.MAX_ITER", 3, "SOLVER.WARMUP_ITERS", 1,
        "SOLVER.STEPS", (2,), "DATALOADER.NUM_WORKERS", 0, "TEST.PRECISE_BN.NUM_ITER", 2,
    )  # fmt: skip
    trainer = Trainer(cfg)
    trainer.resume_or_load(resume=False)
    before = {k: v.clone() for k, v in trainer.model.state_dict().items()}
    trainer.train()
    history = trainer.storage.history("loss_keypoint").values()
    assert len(history) == 3 and all(np.isfinite(v) for v, _ in history)
    after = trainer.model.state_dict()
    changed = [k for k in before if not torch.equal(before[k], after[k])]
    assert any(k.startswith("roi_heads.keypoint_head.") for k in changed)
    assert any(k.startswith("backbone.bottom_up.") for k in changed)
