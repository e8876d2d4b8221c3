# Importing synthetic registers the synthetic_keypoints_{train,val} datasets.
from . import catalog, synthetic  # noqa: F401
