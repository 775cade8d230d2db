"""Pictures a person can read: heat-map overlays, and the figure helpers the evaluation report and
``multiad_monai.compare`` share. matplotlib is imported here only, when a picture is made."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import numpy as np
from scipy import ndimage

from multiad_monai.utils.atomic import atomic_write

if TYPE_CHECKING:
    from matplotlib.figure import Figure

__all__ = ["overlay", "new_figure", "save_png"]


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
    from matplotlib import colormaps

    image = np.asarray(image, dtype=np.float32)
    rgb = np.repeat(image[..., None], 3, -1) if image.ndim == 2 else np.moveaxis(image, 0, -1)
    heat = colormaps["jet"](np.clip(np.asarray(anomaly_map, dtype=np.float32), 0, 1))[..., :3]
    blended = (1 - alpha) * np.clip(rgb, 0, 1) + alpha * heat
    if mask is not None:
        mask = np.asarray(mask) > 0
        edge = mask & ~ndimage.binary_erosion(mask)
        blended[edge] = (0.0, 1.0, 0.0)
    return (blended * 255).round().astype(np.uint8)


def new_figure(**kwargs: Any) -> Figure:
    """A matplotlib ``Figure`` drawn off-screen (no pyplot, no display, safe in threads and workers)."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    figure = Figure(**kwargs)
    FigureCanvasAgg(figure)
    return figure


def save_png(figure: Figure, path: str) -> str:
    """Write ``figure`` to ``path`` as a PNG (100 dpi, tight), atomically; returns ``path``."""
    atomic_write(path, lambda tmp: figure.savefig(tmp, format="png", dpi=100, bbox_inches="tight"))
    return path
