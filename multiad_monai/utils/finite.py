"""Finding NaN and Inf in a state dict: what a diverged model leaves in its weights and buffers."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch

__all__ = ["DivergenceError", "listing", "nonfinite_tensors"]


class DivergenceError(RuntimeError):
    """Training produced non-finite values; the message names the epoch, the tensors and the likely cause."""


def nonfinite_tensors(state: Mapping[str, Any], prefixes: tuple[str, ...] = ()) -> list[str]:
    """Names of the floating-point tensors of ``state`` (a state dict) holding NaN or Inf.

    Args:
        state: name -> tensor (other values are skipped).
        prefixes: only names starting with one of these (all when empty).
    """
    return [
        name
        for name, value in state.items()
        if isinstance(value, torch.Tensor)
        and value.is_floating_point()
        and (not prefixes or name.startswith(prefixes))
        and not bool(torch.isfinite(value).all())
    ]


def listing(names: list[str], n: int = 3) -> str:
    """``"10 tensors (a, b, c, ...)"``: how many, and the first few by name."""
    return f"{len(names)} tensor{'s' * (len(names) != 1)} ({', '.join(names[:n])}{', ...' if len(names) > n else ''})"
