"""The deployment runner: an exported pose model on OpenVINO or onnxruntime, on the CPU.

This folder needs numpy, opencv-python and one of the two runtimes, and imports nothing else
(neither PyTorch, nor detectron2, nor the rest of d2_edwpose), so that it can be copied next to
the ``.onnx`` file into a service, e.g. as ``pose_runner/``::

    python -m pose_runner model.onnx photo.jpg [--runtime openvino|onnxruntime] [--precision bf16]

    from pose_runner import OnnxPoseRunner
    runner = OnnxPoseRunner("model.onnx")  # or "model_int8.onnx"; runtime=, precision="bf16"
    poses = runner(cv2.imread("photo.jpg"))  # a BGR image, as OpenCV reads it
    poses["boxes"]      # (N, 4) float32, XYXY in the pixel coordinates of the image given
    poses["scores"]     # (N,) float32
    poses["classes"]    # (N,) int64 (0 = person)
    poses["keypoints"]  # (N, K, 3) float32: x, y, score of each keypoint
    runner.keypoint_names  # their names (COCO's 17 person keypoints, or the dataset's)

What the runner needs to know (fixed size, channel order, the score threshold applied in the
graph, the keypoint names, the precision of an INT8 file) is in the ONNX file's metadata
(export_contract.py). Both runtimes run the same file with the same pre- and post-processing
(onnx_pose_runner.py); OpenVINO also runs its float operations in bfloat16 and INT8 files fast
(runtimes.py).
"""
from .onnx_pose_runner import ExportedModelError, OnnxPoseRunner

__all__ = ["ExportedModelError", "OnnxPoseRunner"]
