"""multiad-monai: Multi-AD unsupervised anomaly detection for medical and industrial images, on MONAI.

Subpackages and modules load on first use (``multiad_monai.data.load_datasets`` after ``import multiad_monai``
works as before), so importing a light part such as :mod:`multiad_monai.recipe` or :mod:`multiad_monai.networks`
does not pull in MLflow, matplotlib or the MONAI Label app.
"""

from __future__ import annotations

import importlib
from typing import Any

__version__ = "0.1.0"


def __getattr__(name: str) -> Any:
    """``multiad_monai.<submodule>`` imports the submodule on first access (PEP 562)."""
    if name.startswith("_"):
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    try:
        return importlib.import_module(f"{__name__}.{name}")
    except ModuleNotFoundError as error:
        if error.name != f"{__name__}.{name}":
            raise
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}") from None
