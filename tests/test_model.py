"""The paper's three configs build and train/infer end to end with detectron2's stock parts."""

import pytest
import torch

from detectron2.engine import DefaultPredictor
from detectron2.modeling import build_model
from detectron2.structures import Boxes, Instances, Keypoints
from detectron2.utils.events import EventStorage

from d2_edwpose.model_zoo import CONFIG_DIR, load_config
from d2_edwpose.modeling.meta_arch import FixedInputSizeRCNN

PAPER_CONFIGS = [f"keypoint_rcnn_mv3_fpn_320_{t}.yaml" for t in ("vanilla", "dw", "edw")]


def cpu_config(name, *opts):
    """The shipped config ``name`` on CPU, with random weights, and ``KEY VALUE`` overrides."""
    return load_config(CONFIG_DIR / name, ["MODEL.DEVICE", "cpu", "MODEL.WEIGHTS", "", *opts])


def person_instances(image_size):
    """Two people with COCO keypoints, in the coordinates of an image of ``image_size``."""
    height, width = image_size
    torch.manual_seed(0)
    boxes = torch.tensor([[20.0, 10.0, 140.0, 220.0], [200.0, 30.0, 330.0, 230.0]])
    x = boxes[:, None, 0] + torch.rand(2, 17) * (boxes[:, None, 2] - boxes[:, None, 0])
    y = boxes[:, None, 1] + torch.rand(2, 17) * (boxes[:, None, 3] - boxes[:, None, 1])
    keypoints = torch.stack([x, y, torch.full_like(x, 2.0)], dim=2)
    instances = Instances((height, width))
    instances.gt_boxes = Boxes(boxes)
    instances.gt_classes = torch.zeros(2, dtype=torch.int64)
    instances.gt_keypoints = Keypoints(keypoints)
    return instances


def non_square_input(height=240, width=360):
    image = torch.randint(0, 256, (3, height, width), dtype=torch.uint8)
    return {"image": image, "instances": person_instances((height, width))}


@pytest.mark.parametrize("config", PAPER_CONFIGS)
def test_paper_config_trains_and_infers_on_cpu(config):
    cfg = cpu_config(config)
    assert cfg.MODEL.ROI_KEYPOINT_HEAD.CONV_TYPE in config
    torch.manual_seed(0)
    model = build_model(cfg)
    assert isinstance(model, FixedInputSizeRCNN) and model.input_size == (320, 320)

    model.train()
    with EventStorage():
        losses = model([non_square_input(), non_square_input(300, 200)])
    assert {"loss_rpn_cls", "loss_rpn_loc", "loss_cls", "loss_box_reg", "loss_keypoint"} <= set(
        losses
    )
    assert all(torch.isfinite(v) for v in losses.values()), losses
    sum(losses.values()).backward()
    # DistributedDataParallel requires every trainable parameter to take part in the loss.
    no_grad = [n for n, p in model.named_parameters() if p.requires_grad and p.grad is None]
    assert no_grad == []

    model.eval()
    with torch.no_grad():
        (output,) = model([{"image": non_square_input()["image"]}])
    instances = output["instances"]
    assert instances.image_size == (240, 360)
    assert len(instances) > 0  # an untrained model still scores ~1000 proposals
    assert instances.pred_keypoints.shape == (len(instances), 17, 3)
    # Keypoints are decoded inside their box, in original-image coordinates.
    boxes = instances.pred_boxes.tensor
    xy = instances.pred_keypoints[..., :2]
    assert (xy[..., 0] >= boxes[:, None, 0] - 1).all() and (
        xy[..., 0] <= boxes[:, None, 2] + 1
    ).all()
    assert (xy[..., 1] >= boxes[:, None, 1] - 1).all() and (
        xy[..., 1] <= boxes[:, None, 3] + 1
    ).all()
    assert boxes[:, 2].max() <= 360 and boxes[:, 3].max() <= 240


def test_three_paper_configs_differ_only_in_conv_type():
    dumps = {}
    for name in PAPER_CONFIGS:
        cfg = cpu_config(name)
        cfg.MODEL.ROI_KEYPOINT_HEAD.CONV_TYPE = "?"
        dumps[name] = cfg.dump()
    assert len(set(dumps.values())) == 1


def test_paper_settings():
    cfg = cpu_config("keypoint_rcnn_mv3_fpn_320_edw.yaml")
    assert tuple(cfg.INPUT.FIXED_SIZE) == (320, 320)
    assert cfg.SOLVER.BASE_LR == 0.02 and cfg.SOLVER.MAX_ITER == 90000
    assert tuple(cfg.SOLVER.STEPS) == (60000, 80000) and cfg.SOLVER.GAMMA == 0.1
    assert cfg.MODEL.MOBILENETV3.ARCH == "large"
    assert cfg.DATASETS.TRAIN == ("keypoints_coco_2017_train",)
    assert cfg.DATASETS.TEST == ("keypoints_coco_2017_val",)


def test_fixed_resize_is_the_same_for_default_predictor_and_model(tmp_path):
    """DefaultPredictor (a BGR numpy image) and a direct call give identical results."""
    cfg = cpu_config("keypoint_rcnn_mv3_fpn_320_edw.yaml", "INPUT.FORMAT", "BGR")
    torch.manual_seed(0)
    predictor = DefaultPredictor(cfg)
    image = torch.randint(0, 256, (250, 410, 3), dtype=torch.uint8).numpy()
    from_predictor = predictor(image)["instances"]
    with torch.no_grad():
        chw = torch.as_tensor(image).permute(2, 0, 1)
        (direct,) = predictor.model([{"image": chw}])
    direct = direct["instances"]
    assert from_predictor.image_size == direct.image_size == (250, 410)
    assert torch.equal(from_predictor.pred_boxes.tensor, direct.pred_boxes.tensor)
    assert torch.equal(from_predictor.pred_keypoints, direct.pred_keypoints)


@pytest.mark.parametrize(
    "key, value, message",
    [
        ("MODEL.ROI_KEYPOINT_HEAD.CONV_TYPE", "sep", "MODEL.ROI_KEYPOINT_HEAD.CONV_TYPE"),
        ("MODEL.ROI_KEYPOINT_HEAD.EXPAND_FACTOR", 0, "MODEL.ROI_KEYPOINT_HEAD.EXPAND_FACTOR"),
        ("INPUT.FIXED_SIZE", (320,), "INPUT.FIXED_SIZE"),
    ],
)
def test_bad_values_fail_at_build_naming_the_key(key, value, message):
    cfg = cpu_config("keypoint_rcnn_mv3_fpn_320_edw.yaml")
    cfg.merge_from_list([key, value])
    with pytest.raises(ValueError, match=message.replace(".", r"\.")):
        build_model(cfg)


def test_ground_truth_is_scaled_with_the_image():
    from d2_edwpose.modeling.meta_arch import _scale_instances

    instances = person_instances((240, 360))
    scaled = _scale_instances(instances, (320, 320))
    assert scaled.image_size == (320, 320)
    expected = instances.gt_boxes.tensor * torch.tensor([320 / 360, 320 / 240] * 2)
    assert torch.allclose(scaled.gt_boxes.tensor, expected)
    kp = instances.gt_keypoints.tensor
    assert torch.allclose(scaled.gt_keypoints.tensor[..., 0], kp[..., 0] * 320 / 360)
    assert torch.allclose(scaled.gt_keypoints.tensor[..., 1], kp[..., 1] * 320 / 240)
    assert torch.equal(scaled.gt_keypoints.tensor[..., 2], kp[..., 2])
    assert torch.equal(scaled.gt_classes, instances.gt_classes)


def test_outputs_come_back_in_input_image_coordinates(monkeypatch):
    model = build_model(cpu_config("keypoint_rcnn_mv3_fpn_320_edw.yaml")).eval()
    seen = {}

    def roi_heads_on_fixed_size(images, features, proposals, targets=None):
        seen["network_input"] = tuple(images.tensor.shape[-2:])
        instances = Instances(images.image_sizes[0])
        instances.pred_boxes = Boxes(
            torch.tensor([[0.0, 0.0, 320.0, 320.0], [80.0, 40.0, 160.0, 200.0]])
        )
        instances.scores = torch.tensor([0.9, 0.8])
        instances.pred_classes = torch.zeros(2, dtype=torch.int64)
        instances.pred_keypoints = torch.tensor(
            [[[160.0, 160.0, 1.0]] * 17, [[80.0, 40.0, 1.0]] * 17]
        )
        return [instances], {}

    monkeypatch.setattr(model.roi_heads, "forward", roi_heads_on_fixed_size)
    with torch.no_grad():
        (output,) = model([{"image": torch.zeros(3, 240, 360, dtype=torch.uint8)}])
    assert seen["network_input"] == (320, 320)
    instances = output["instances"]
    assert instances.image_size == (240, 360)
    expected_boxes = torch.tensor([[0.0, 0.0, 360.0, 240.0], [90.0, 30.0, 180.0, 150.0]])
    assert torch.allclose(instances.pred_boxes.tensor, expected_boxes)
    assert torch.allclose(
        instances.pred_keypoints[0, :, :2], torch.tensor([180.0, 120.0]).expand(17, 2)
    )
    assert torch.allclose(
        instances.pred_keypoints[1, :, :2], torch.tensor([90.0, 30.0]).expand(17, 2)
    )


def test_images_of_the_fixed_size_pass_through_untouched():
    model = build_model(cpu_config("keypoint_rcnn_mv3_fpn_320_edw.yaml"))
    inputs = {"image": torch.zeros(3, 320, 320, dtype=torch.uint8)}
    (resized,) = model._resize_inputs([inputs])
    assert resized is inputs
    with pytest.raises(ValueError, match="proposals"):
        model._resize_inputs([{"image": torch.zeros(3, 200, 300), "proposals": None}])


def test_scaling_refuses_fields_it_cannot_resize():
    from d2_edwpose.modeling.meta_arch import _scale_instances

    instances = person_instances((240, 360))
    instances.gt_masks = torch.zeros(2, 240, 360)
    with pytest.raises(ValueError, match="gt_masks"):
        _scale_instances(instances, (320, 320))
