"""The environment: detectron2 (Python-only or full build) imports and runs Keypoint R-CNN."""
import importlib.util
import subprocess
import sys

import numpy as np
import pytest
import torch

from detectron2 import model_zoo
from detectron2.data import DatasetCatalog, MetadataCatalog, build_detection_test_loader
from detectron2.evaluation import COCOEvaluator
from detectron2.modeling import build_model
from detectron2.structures import Boxes, Instances

from d2_edwpose import compat
from d2_edwpose.model_zoo import load_config

D2_MODULES = [
    "detectron2.modeling",
    "detectron2.layers",
    "detectron2.evaluation",
    "detectron2.engine",
]


@pytest.mark.parametrize("first", range(len(D2_MODULES)))
def test_detectron2_imports_in_any_order_without_d2_edwpose(first):
    order = D2_MODULES[first:] + D2_MODULES[:first]
    if first % 2:
        order = order[:1] + order[1:][::-1]
    code = (
        "import sys\n"
        + "".join(f"import {m}\n" for m in order)
        + (
            "assert 'd2_edwpose' not in sys.modules, 'the check must not rely on d2_edwpose'\n"
            "print('ok')\n"
        )
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert result.returncode == 0 and result.stdout.strip() == "ok", (order, result.stderr[-2000:])


def test_stock_keypoint_rcnn_from_model_zoo_runs_inference_on_cpu():
    cfg = load_config(
        model_zoo.get_config_file("COCO-Keypoints/keypoint_rcnn_R_50_FPN_1x.yaml"),
        ["MODEL.DEVICE", "cpu", "MODEL.WEIGHTS", ""],
    )
    torch.manual_seed(0)
    model = build_model(cfg).eval()
    height, width = 160, 224
    image = torch.randint(0, 256, (3, height, width), dtype=torch.uint8)
    with torch.no_grad():
        (output,) = model([{"image": image, "height": 2 * height, "width": 2 * width}])
    instances = output["instances"]
    assert instances.image_size == (2 * height, 2 * width)
    assert instances.pred_keypoints.shape == (len(instances), 17, 3)
    assert instances.pred_boxes.tensor.shape == (len(instances), 4)


@pytest.mark.skipif(compat.has_compiled_ops(), reason="detectron2 has its compiled ops")
def test_compiled_only_ops_raise_a_clear_error():
    from detectron2.layers import ROIAlignRotated, nms_rotated
    from detectron2.structures import RotatedBoxes, pairwise_iou_rotated

    boxes = torch.tensor([[10.0, 10.0, 8.0, 4.0, 30.0], [11.0, 10.0, 8.0, 4.0, 0.0]])
    calls = {
        "ROIAlignRotated": lambda: ROIAlignRotated((2, 2), 1.0, 0)(
            torch.zeros(1, 1, 16, 16), torch.cat([torch.zeros(2, 1), boxes], dim=1)
        ),
        "nms_rotated": lambda: nms_rotated(boxes, torch.tensor([0.9, 0.8]), 0.5),
        "pairwise_iou_rotated": lambda: pairwise_iou_rotated(
            RotatedBoxes(boxes), RotatedBoxes(boxes)
        ),
    }
    for op_name, call in calls.items():
        with pytest.raises(compat.CompiledOpUnavailable) as error:
            call()
        assert op_name in str(error.value)
        assert "build detectron2 from source" in str(error.value)


def _ground_truth_as_predictions(dataset_dict, annotations):
    people = [a for a in annotations if np.count_nonzero(np.asarray(a["keypoints"])[2::3]) > 0]
    instances = Instances((dataset_dict["height"], dataset_dict["width"]))
    boxes = [[x, y, x + w, y + h] for x, y, w, h in (a["bbox"] for a in people)]
    instances.pred_boxes = Boxes(torch.tensor(boxes, dtype=torch.float32).reshape(-1, 4))
    instances.scores = torch.ones(len(people))
    instances.pred_classes = torch.zeros(len(people), dtype=torch.int64)
    instances.pred_keypoints = torch.tensor(
        [a["keypoints"] for a in people], dtype=torch.float32
    ).reshape(-1, 17, 3)
    return instances, len(annotations) - len(people)


def test_coco_evaluator_scores_ground_truth_on_real_coco_file(coco_mini_dataset, tmp_path):
    name = coco_mini_dataset
    annotations = {d["image_id"]: d["annotations"] for d in DatasetCatalog.get(name)}
    loader = build_detection_test_loader(load_config(opts=["DATALOADER.NUM_WORKERS", 0]), name)
    evaluator = COCOEvaluator(
        name, tasks=("keypoints",), distributed=False, output_dir=str(tmp_path)
    )
    evaluator.reset()
    people_without_keypoints = 0
    for inputs in loader:
        outputs = []
        for dataset_dict in inputs:
            instances, skipped = _ground_truth_as_predictions(
                dataset_dict, annotations[dataset_dict["image_id"]]
            )
            people_without_keypoints += skipped
            outputs.append({"instances": instances})
        evaluator.process(inputs, outputs)
    results = evaluator.evaluate()
    assert people_without_keypoints == 2  # kept in the file, as real COCO has them
    assert MetadataCatalog.get(name).evaluator_type == "coco"
    assert results["keypoints"]["AP"] >= 99.0, results["keypoints"]


def test_detectron2_export_imports_and_caffe2_entry_points_say_why_they_fail():
    """``detectron2.export`` imports on every detectron2 (its TracingAdapter and
    ``FlopCountAnalysis`` are what the project uses). Its Caffe2 API differs by version:

    * detectron2 0.6 exports it unconditionally, and its ``api.py`` imports caffe2, which
      PyTorch >= 2.0 does not ship: compat's stand-in lets the package import, and the Caffe2
      entry points raise ``Caffe2Unavailable`` saying why and what to use instead;
    * detectron2 main exports it only where caffe2 imports: without caffe2 the names do not
      exist, and ``from detectron2.export import Caffe2Tracer`` is an ImportError.
    """
    code = (
        "import importlib.util\n"
        "import detectron2.export\n"
        "from detectron2.export import TracingAdapter\n"
        "from detectron2.utils.analysis import FlopCountAnalysis\n"
        "print('caffe2' if importlib.util.find_spec('caffe2') else 'no caffe2')\n"
        "if not hasattr(detectron2.export, 'Caffe2Tracer'):\n"
        "    print('no Caffe2 API')\n"
        "    try:\n"
        "        from detectron2.export import Caffe2Tracer\n"
        "    except ImportError:\n"
        "        print('ImportError')\n"
        "else:\n"
        "    from detectron2.export import Caffe2Tracer\n"
        "    try:\n"
        "        Caffe2Tracer(None, None, None)\n"
        "    except RuntimeError as e:\n"
        "        print(type(e).__name__, e)\n"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr[-2000:]
    lines = result.stdout.splitlines()
    if lines[0] == "caffe2":
        pytest.skip("this PyTorch ships caffe2: detectron2's Caffe2 export API is the real one")
    if lines[1] == "no Caffe2 API":  # detectron2 main
        assert lines[2] == "ImportError", result.stdout
    else:  # detectron2 0.6, with compat's stand-in
        assert lines[1].startswith("Caffe2Unavailable"), result.stdout
        assert "Caffe2Tracer exports to Caffe2" in result.stdout
        assert "TracingAdapter" in result.stdout
