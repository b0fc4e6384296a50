"""A PaddleSeg-compatible segmentation package (config, datasets, transforms, models, core)
with a channel-pruning engine in ``paddleseg.slim``."""
from . import env  # noqa: F401  (sets import order and log levels before paddle loads)

__version__ = "0.1.0"
