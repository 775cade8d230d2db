"""The one check of what a trained model is fed: the layout, size and value range it was trained and calibrated
for. TorchScript-compatible, so the exported model runs it too (:mod:`multiad_monai.export`); the eager path
(:meth:`multiad_monai.inference.AnomalyInferer.predict_samples`, behind the CLI, MONAI Label and the pyfunc model)
runs it on every batch."""

from __future__ import annotations

import warnings

import torch

__all__ = ["check_images"]


def check_images(
    images: torch.Tensor, height: int, width: int, tolerance: float = 0.01, refuse_range: bool = True
) -> None:
    """Raise ``ValueError`` (naming the fix) unless ``images`` is a float ``(N, 3, height, width)`` batch with
    finite values in ``[0, 1]`` (``tolerance`` allows the overshoot of interpolation).

    Args:
        images: the model's input.
        height: the recipe's ``image_size`` (height), at which the model was trained and calibrated.
        width: its width.
        tolerance: how far outside ``[0, 1]`` values may lie.
        refuse_range: values outside ``[0, 1]`` raise; ``False`` warns instead (the recipe's own preprocessing
            made them: the scores are still computed, but on a range the calibration did not see).
    """
    expected = f"expected float images of shape (N, 3, {height}, {width}) with values in [0, 1]"
    shape = list(images.shape)
    if images.dim() != 4 or images.size(1) != 3:
        hint = ""
        if images.dim() == 4 and images.size(-1) == 3:
            hint = ": the channels come last, pass images.permute(0, 3, 1, 2)"
        elif images.dim() == 4 and images.size(1) == 1:
            hint = ": a grey image, pass images.expand(-1, 3, -1, -1)"
        elif images.dim() == 3:
            hint = ": a single image, pass images.unsqueeze(0)"
        raise ValueError(f"{expected}, got shape {shape}{hint}")
    if images.size(2) != height or images.size(3) != width:
        raise ValueError(
            f"{expected}, got {images.size(2)} x {images.size(3)}: the model was trained and calibrated at "
            f"{height} x {width}; resize as the recipe in multiad.json says"
        )
    if not images.is_floating_point():
        raise ValueError(f"{expected}, got integer values: convert to float and divide 8-bit images by 255")
    if not bool(torch.isfinite(images).all()):
        raise ValueError(f"{expected}, got NaN or Inf values")
    low, high = float(images.min()), float(images.max())
    if low < -tolerance or high > 1.0 + tolerance:
        message = f"{expected}, got values in [{low}, {high}]: scale the intensities as the recipe in multiad.json says"
        if refuse_range:
            raise ValueError(message)
        warnings.warn(message, stacklevel=2)
