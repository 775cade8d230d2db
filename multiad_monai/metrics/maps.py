"""The anomaly maps and masks of one evaluation epoch, held once for the pixel metrics and the evaluation report."""

from __future__ import annotations

from collections.abc import Callable

import ignite.distributed as idist
import numpy as np
import torch
from ignite.engine import Engine, Events
from ignite.exceptions import NotComputableError
from monai.utils import evenly_divisible_all_gather

from multiad_monai.metrics import functional
from multiad_monai.utils import MultiADKeys

__all__ = ["EvaluationMaps", "pixel_output"]


def pixel_output(output: dict) -> tuple[torch.Tensor, torch.Tensor]:
    """``(maps, masks)`` of an evaluator output, on CPU and flattened to ``(N, H*W)``: float32 maps, uint8 masks
    (all zero when the batch has no mask)."""
    anomaly_map = output[MultiADKeys.ANOMALY_MAP].detach().float().cpu()
    mask = output.get(MultiADKeys.MASK)
    mask = torch.zeros_like(anomaly_map, dtype=torch.bool) if mask is None else mask.detach().cpu()
    return anomaly_map.flatten(1), mask.flatten(1).to(torch.uint8)


def _sync_device() -> torch.device:
    return torch.device("cuda", torch.cuda.current_device()) if idist.backend() == "nccl" else torch.device("cpu")


class EvaluationMaps:
    """Every test map and mask of an epoch, collected once and shared by :class:`PixelAUROC`,
    :class:`PixelAUPRO` and :class:`multiad_monai.handlers.EvaluationReport`; the PRO curve is computed once.

    Attached to an engine (by each user, only the first attach registers), it forgets the previous epoch at
    ``EPOCH_STARTED`` and keeps ``output_transform(engine.state.output)`` at ``ITERATION_COMPLETED``.
    Under DistributedDataParallel each rank holds its shard; :meth:`gathered` joins them exactly once.

    Args:
        output_transform: evaluator output -> ``(maps, masks)`` ``(N, K)``.
    """

    def __init__(self, output_transform: Callable = pixel_output) -> None:
        self.output_transform = output_transform
        self.reset()

    def attach(self, engine: Engine) -> None:
        if not engine.has_event_handler(self.collect, Events.ITERATION_COMPLETED):
            engine.add_event_handler(Events.EPOCH_STARTED, self.reset)
            engine.add_event_handler(Events.ITERATION_COMPLETED, self.collect)

    def reset(self, engine: Engine | None = None) -> None:
        self._maps: list[torch.Tensor] = []
        self._masks: list[torch.Tensor] = []
        self._gathered: tuple[torch.Tensor, torch.Tensor] | None = None
        self._curves: dict[tuple[int, ...], tuple[np.ndarray, np.ndarray]] = {}
        self.map_size: tuple[int, ...] | None = None  # (H, W) of the maps, known when collected from an engine
        self.has_masks = False  # some batch carried a ground-truth mask

    def collect(self, engine: Engine) -> None:
        output = engine.state.output
        self.map_size = tuple(output[MultiADKeys.ANOMALY_MAP].shape[2:])
        self.has_masks |= output.get(MultiADKeys.MASK) is not None
        self.update(self.output_transform(output))

    def update(self, output: tuple[torch.Tensor, torch.Tensor]) -> None:
        """Keep one batch of ``(maps, masks)`` ``(N, K)``."""
        maps, masks = output
        self._maps.append(maps)
        self._masks.append(masks)
        self._gathered = None
        self._curves = {}

    def gathered(self) -> tuple[torch.Tensor, torch.Tensor]:
        """``(maps, masks)`` ``(N, K)`` of the whole epoch, over all ranks.

        Raises:
            NotComputableError: before the first batch.
        """
        if self._gathered is None:
            if not self._maps:
                raise NotComputableError("the metric needs at least one batch before it can be computed")
            maps, masks = torch.cat(self._maps), torch.cat(self._masks)
            if idist.get_world_size() > 1:
                maps = evenly_divisible_all_gather(maps.to(_sync_device()), concat=True).cpu()
                masks = evenly_divisible_all_gather(masks.to(_sync_device()), concat=True).cpu()
            self._maps, self._masks = [maps], [masks]  # held once, concatenated
            self._gathered = maps, masks
        return self._gathered

    def pro_curve(self, size: tuple[int, ...]) -> tuple[np.ndarray, np.ndarray]:
        """:func:`multiad_monai.metrics.functional.pro_curve` of the maps shaped ``(N, *size)``, computed once."""
        size = tuple(size)
        if size not in self._curves:
            maps, masks = self.gathered()
            self._curves[size] = functional.pro_curve(maps.numpy().reshape(-1, *size), masks.numpy().reshape(-1, *size))
        return self._curves[size]
