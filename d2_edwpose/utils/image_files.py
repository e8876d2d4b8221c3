"""The image files that the tools read from a folder (the demo, the export's verification,
the INT8 calibration, the YOLO-pose conversion), and the EXIF orientation that decides the
size detectron2 reads an image at (the image scan, the YOLO-pose conversion)."""

__all__ = ["IMAGE_SUFFIXES", "TRANSPOSING_ORIENTATIONS", "exif_orientation", "is_image_file"]

# EXIF "Orientation" values for which detectron2's _apply_exif_orientation transposes the
# image (TRANSPOSE, ROTATE_270, TRANSVERSE, ROTATE_90), so that width and height swap.
TRANSPOSING_ORIENTATIONS = (5, 6, 7, 8)
_EXIF_ORIENTATION_TAG = 0x0112

# Ultralytics' image formats (IMG_FORMATS) that PIL, and so detectron2's read_image, reads.
IMAGE_SUFFIXES = frozenset({".bmp", ".jpeg", ".jpg", ".mpo", ".png", ".tif", ".tiff", ".webp"})


def is_image_file(path):
    """Whether ``path`` (a ``pathlib.Path``) has an image suffix, in any case."""
    return path.suffix.lower() in IMAGE_SUFFIXES


def exif_orientation(image):
    """The EXIF orientation of a PIL image that detectron2's ``_apply_exif_orientation`` reads
    (0 for none): an EXIF block that cannot be parsed counts as none, as there."""
    try:
        orientation = image.getexif().get(_EXIF_ORIENTATION_TAG)
    except Exception:
        return 0
    return orientation if isinstance(orientation, int) and 1 <= orientation <= 8 else 0
