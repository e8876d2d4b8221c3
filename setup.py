#!/usr/bin/env python
"""d2_edwpose: realtime multi-person pose estimation for detectron2.

detectron2 is not on PyPI, so it is not listed in install_requires; ``make setup``
(d2_edwpose/bootstrap_env.py) provides it. See README.md.
"""
from setuptools import find_packages, setup

setup(
    name="d2_edwpose",
    version="0.1.0",
    description="Keypoint R-CNN with a MobileNetV3-FPN backbone and (expanded) depthwise "
    "separable keypoint heads, as a detectron2 extension",
    packages=find_packages(include=["d2_edwpose", "d2_edwpose.*"]),
    # The configs (d2_edwpose.model_zoo), so that a non-editable install has them.
    package_data={"d2_edwpose.model_zoo": ["configs/*.yaml"]},
    python_requires=">=3.10",
    install_requires=[
        "torch>=2.1",
        "torchvision",
        "fvcore>=0.1.5,<0.1.6",
        "iopath>=0.1.7,<0.1.10",
        "pycocotools>=2.0.2",
        "opencv-python",
        "matplotlib",
        "setuptools>=64,<81",
    ],
    # ONNX export and INT8 quantization (d2_edwpose.export, d2_edwpose.export.quantization), the
    # runner's two runtimes and its tracking (d2_edwpose/deploy/).
    extras_require={"export": ["onnx", "onnxruntime", "openvino", "trackers==2.6.1"]},
)
