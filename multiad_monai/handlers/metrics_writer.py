"""Write the final evaluation metrics to ``{output_dir}/metrics.json``."""

from __future__ import annotations

import json
import logging
import math
import os
import tempfile
from collections.abc import Callable, Mapping
from typing import Any

from ignite.engine import Engine, Events

__all__ = ["MetricsJSONWriter", "write_json_atomic"]


def write_json_atomic(path: str, content: Any) -> None:
    """Write JSON through a temporary file and an atomic rename: readers never see half a file."""
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=os.path.dirname(os.path.abspath(path)), suffix=".tmp")
    try:
        with os.fdopen(fd, "w") as f:
            json.dump(content, f, indent=2)
        os.replace(tmp, path)
    except BaseException:
        os.remove(tmp)
        raise


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
