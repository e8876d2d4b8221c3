# Importing the modules registers them in detectron2's registries.
from . import backbone, meta_arch, roi_heads  # noqa: F401
