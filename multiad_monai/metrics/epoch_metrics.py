"""Ignite metrics over a whole evaluation epoch, reading the :class:`MultiADEvaluator` output keys."""

from __future__ import annotations

from collections.abc import Callable

import ignite.distributed as idist
import numpy as np
import torch
from ignite.engine import Engine
from ignite.exceptions import NotComputableError
from ignite.metrics import EpochMetric, Metric
from ignite.metrics.metric import EpochWise, MetricUsage
from monai.utils import evenly_divisible_all_gather

from multiad_monai.metrics import functional
from multiad_monai.metrics.maps import EvaluationMaps, _sync_device, pixel_output
from multiad_monai.upstream import epoch_metric_outputs
from multiad_monai.utils import MultiADKeys

__all__ = ["ImageAUROC", "ImageF1Max", "PixelAUROC", "PixelAUPRO", "EvaluationMaps"]


def _image_output(output: dict) -> tuple[torch.Tensor, torch.Tensor]:
    return output[MultiADKeys.PRED_SCORE].detach().float().cpu(), output["label"].detach().cpu()


class _AnomalyEpochMetric(EpochMetric):
    """Accumulates the whole epoch on CPU, then calls a ``multiad_monai.metrics.functional`` function.

    Under DistributedDataParallel each rank scores a shard of the test set (``even_divisible=False``);
    shards of unequal length are gathered exactly, so the metric covers every sample once.
    """

    def __init__(self, fn: Callable[..., float], output_transform: Callable, **kwargs) -> None:
        def compute(pred: torch.Tensor, target: torch.Tensor) -> float:
            return fn(pred.numpy(), target.numpy(), **kwargs)

        super().__init__(compute, output_transform=output_transform, check_compute_fn=False)

    def compute(self) -> float:
        predictions, targets = epoch_metric_outputs(self)
        if len(predictions) < 1:
            raise NotComputableError("the metric needs at least one batch before it can be computed")
        predictions, targets = torch.cat(predictions), torch.cat(targets)
        if idist.get_world_size() > 1:
            predictions = evenly_divisible_all_gather(predictions.to(_sync_device()), concat=True).cpu()
            targets = evenly_divisible_all_gather(targets.to(_sync_device()), concat=True).cpu()
        return self.compute_fn(predictions, targets)


class ImageAUROC(_AnomalyEpochMetric):
    def __init__(self, output_transform: Callable = _image_output) -> None:
        super().__init__(functional.image_auroc, output_transform)


class ImageF1Max(_AnomalyEpochMetric):
    def __init__(self, output_transform: Callable = _image_output) -> None:
        super().__init__(functional.image_f1_max, output_transform)


class _PixelMetric(Metric):
    """A pixel metric over the :class:`EvaluationMaps` of an epoch: metrics given the same ``maps`` share one
    copy of the maps (and of the PRO curve) with each other and with the evaluation report.

    ``update`` keeps a batch in ``maps``; attached to an engine, ``maps`` collects each iteration itself, once
    for all its users.
    """

    def __init__(self, maps: EvaluationMaps | None = None, output_transform: Callable = pixel_output) -> None:
        self.maps = EvaluationMaps(output_transform) if maps is None else maps
        super().__init__(output_transform=output_transform)

    def attach(self, engine: Engine, name: str, usage: str | MetricUsage = EpochWise()) -> None:
        self.maps.attach(engine)
        super().attach(engine, name, usage)

    def reset(self) -> None:
        self.maps.reset()

    def update(self, output: tuple[torch.Tensor, torch.Tensor]) -> None:
        self.maps.update(output)

    def iteration_completed(self, engine: Engine) -> None:
        """Nothing: :attr:`maps` collects the batch for every metric sharing it."""


class PixelAUROC(_PixelMetric):
    """Pixel AUROC of the epoch's maps against their masks.

    Args:
        maps: the epoch's maps, shared with other pixel metrics and the report; None: its own.
        output_transform: evaluator output -> ``(maps, masks)`` ``(N, H*W)`` (used when ``maps`` is None).
    """

    def compute(self) -> float:
        maps, masks = self.maps.gathered()
        return functional.pixel_auroc(maps.numpy(), masks.numpy())


class PixelAUPRO(_PixelMetric):
    """AUPRO of the maps; maps are ``(N, H*W)`` here, so regions are found on the ``image_size`` shape.

    Args:
        image_size: ``(H, W)`` of the maps, to rebuild connected regions.
        fpr_limit: upper FPR bound of the integral.
        maps: the epoch's maps, shared with other pixel metrics and the report; None: its own.
        output_transform: evaluator output -> ``(maps, masks)`` ``(N, H*W)`` (used when ``maps`` is None).
    """

    def __init__(
        self,
        image_size,
        fpr_limit: float = 0.3,
        maps: EvaluationMaps | None = None,
        output_transform: Callable = pixel_output,
    ) -> None:
        if not 0 < fpr_limit <= 1:
            raise ValueError(f"fpr_limit must be in (0, 1], got {fpr_limit}")
        self.size = tuple(np.broadcast_to(np.asarray(image_size), (2,)).tolist())
        self.fpr_limit = fpr_limit
        super().__init__(maps, output_transform)

    def compute(self) -> float:
        masks = self.maps.gathered()[1].bool()
        if masks.all() or not masks.any():  # one class only, as functional.pixel_aupro
            return float("nan")
        return functional.aupro_of_curve(*self.maps.pro_curve(self.size), self.fpr_limit)
