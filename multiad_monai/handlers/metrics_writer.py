"""Write the final evaluation metrics to ``{output_dir}/metrics.json``."""

from __future__ import annotations

import json
import logging
import math
import os
from collections.abc import Callable, Mapping
from typing import Any

from ignite.engine import Engine, Events

from multiad_monai.utils import atomic_write

__all__ = ["MetricsJSONWriter", "write_json_atomic"]


def write_json_atomic(path: str, content: Any) -> None:
    """Write ``content`` as JSON with :func:`multiad_monai.utils.atomic_write`: readers never see half a file."""

    def write(tmp: str) -> None:
        with open(tmp, "w", encoding="utf-8") as f:
            json.dump(content, f, indent=2)

    atomic_write(path, write)


class MetricsJSONWriter:
    """On ``COMPLETED``, write the engine's metrics plus ``extra`` values to ``{output_dir}/metrics.json``.

    Metrics that are NaN (e.g. pixel metrics of a dataset without masks) are left out rather than written
    as numbers.

    Args:
        output_dir: folder of ``metrics.json``.
        extra: values added to the file, or a callable returning them when the file is written.
        filename: file name inside ``output_dir``.
    """

    def __init__(
        self,
        output_dir: str,
        extra: Mapping[str, Any] | Callable[[], Mapping[str, Any]] | None = None,
        filename: str = "metrics.json",
    ) -> None:
        self.path = os.path.join(output_dir, filename)
        self.extra = extra
        self.logger = logging.getLogger(__name__)

    def attach(self, engine: Engine) -> None:
        engine.add_event_handler(Events.COMPLETED, self)

    def __call__(self, engine: Engine) -> None:
        extra = self.extra() if callable(self.extra) else (self.extra or {})
        metrics = {k: float(v) for k, v in engine.state.metrics.items() if not math.isnan(float(v))}
        content = {**metrics, **extra}
        write_json_atomic(self.path, content)
        self.logger.info(f"metrics written to {self.path}: {json.dumps(content)}")
