"""A predictor's poses drawn on image files with detectron2's ``Visualizer``, as the demo and
the CPU demo draw them."""
import logging
import time

import cv2

from detectron2.utils.visualizer import ColorMode, Visualizer

from ..utils.atomic_files import atomic_path

__all__ = ["draw_instances", "predict_and_draw_image"]

logger = logging.getLogger(__name__)


def draw_instances(image, instances, metadata):
    """``instances`` (boxes, scores, keypoints) drawn on a BGR image with the skeleton of
    ``metadata``."""
    visualizer = Visualizer(image[:, :, ::-1], metadata, instance_mode=ColorMode.IMAGE)
    return visualizer.draw_instance_predictions(instances).get_image()[:, :, ::-1]


def predict_and_draw_image(predictor, metadata, path, output):
    """Predict on the image file ``path`` and write the drawing to the file ``output``."""
    image = cv2.imread(str(path))  # BGR, as DefaultPredictor expects by default
    if image is None:
        raise ValueError(f"{path}: not a readable image file")
    start = time.perf_counter()
    instances = predictor(image)["instances"].to("cpu")
    elapsed = time.perf_counter() - start
    with atomic_path(output) as partial:
        if not cv2.imwrite(str(partial), draw_instances(image, instances, metadata)):
            raise OSError(f"{output}: OpenCV could not write this image")
    logger.info(f"{path}: {len(instances)} people in {elapsed * 1000:.0f} ms -> {output}")
    return output
