"""Heat-map overlays a person can read: the image, the anomaly map in colour, the ground truth outlined."""

from __future__ import annotations

import numpy as np
from matplotlib import colormaps
from scipy import ndimage

__all__ = ["overlay"]


def overlay(
    image: np.ndarray, anomaly_map: np.ndarray, mask: np.ndarray | None = None, alpha: float = 0.5
) -> np.ndarray:
    """Blend a ``[0, 1]`` anomaly map over an image.

    Args:
        image: ``(3, H, W)`` or ``(H, W)`` in ``[0, 1]``.
        anomaly_map: ``(H, W)`` in ``[0, 1]`` (0.5 = threshold when normalised by the model).
        mask: optional ``(H, W)`` ground truth, drawn as a green outline.
        alpha: weight of the heat map.

    Returns:
        ``(H, W, 3)`` uint8 RGB.
    """
    image = np.asarray(image, dtype=np.float32)
    rgb = np.repeat(image[..., None], 3, -1) if image.ndim == 2 else np.moveaxis(image, 0, -1)
    heat = colormaps["jet"](np.clip(np.asarray(anomaly_map, dtype=np.float32), 0, 1))[..., :3]
    blended = (1 - alpha) * np.clip(rgb, 0, 1) + alpha * heat
    if mask is not None:
        mask = np.asarray(mask) > 0
        edge = mask & ~ndimage.binary_erosion(mask)
        blended[edge] = (0.0, 1.0, 0.0)
    return (blended * 255).round().astype(np.uint8)
