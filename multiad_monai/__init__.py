"""multiad-monai: Multi-AD unsupervised anomaly detection for medical and industrial images, on MONAI."""

from . import data, engines, handlers, losses, metrics, networks, transforms, utils, visualize

__version__ = "0.1.0"
