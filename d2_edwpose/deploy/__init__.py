"""Deployment runners that need neither PyTorch nor detectron2 (see onnx_pose_runner.py)."""
