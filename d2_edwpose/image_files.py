"""The image files that the tools read from a folder (the demo, the export's verification,
the INT8 calibration, the YOLO-pose conversion)."""

__all__ = ["IMAGE_SUFFIXES", "is_image_file"]

# Ultralytics' image formats (IMG_FORMATS) that PIL, and so detectron2's read_image, reads.
IMAGE_SUFFIXES = frozenset({".bmp", ".jpeg", ".jpg", ".mpo", ".png", ".tif", ".tiff", ".webp"})


def is_image_file(path):
    """Whether ``path`` (a ``pathlib.Path``) has an image suffix, in any case."""
    return path.suffix.lower() in IMAGE_SUFFIXES
