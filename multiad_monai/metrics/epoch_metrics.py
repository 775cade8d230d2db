"""Ignite metrics over a whole evaluation epoch, reading the :class:`MultiADEvaluator` output keys."""

from __future__ import annotations

from collections.abc import Callable

import ignite.distributed as idist
import numpy as np
import torch
from ignite.exceptions import NotComputableError
from ignite.metrics import EpochMetric
from monai.utils import evenly_divisible_all_gather

from multiad_monai.metrics import functional
from multiad_monai.upstream import epoch_metric_outputs
from multiad_monai.utils import MultiADKeys

__all__ = ["ImageAUROC", "ImageF1Max", "PixelAUROC", "PixelAUPRO"]


def _image_output(output: dict) -> tuple[torch.Tensor, torch.Tensor]:
    return output[MultiADKeys.PRED_SCORE].detach().float().cpu(), output["label"].detach().cpu()


def _pixel_output(output: dict) -> tuple[torch.Tensor, torch.Tensor]:
    anomaly_map = output[MultiADKeys.ANOMALY_MAP].detach().float().cpu()
    mask = output.get(MultiADKeys.MASK)
    mask = torch.zeros_like(anomaly_map, dtype=torch.bool) if mask is None else mask.detach().cpu()
    # EpochMetric wants (N, K): flatten the maps, the shape is restored in `compute`
    return anomaly_map.flatten(1), mask.flatten(1).to(torch.uint8)


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


def _sync_device() -> torch.device:
    return torch.device("cuda", torch.cuda.current_device()) if idist.backend() == "nccl" else torch.device("cpu")


class ImageAUROC(_AnomalyEpochMetric):
    def __init__(self, output_transform: Callable = _image_output) -> None:
        super().__init__(functional.image_auroc, output_transform)


class ImageF1Max(_AnomalyEpochMetric):
    def __init__(self, output_transform: Callable = _image_output) -> None:
        super().__init__(functional.image_f1_max, output_transform)


class PixelAUROC(_AnomalyEpochMetric):
    def __init__(self, output_transform: Callable = _pixel_output) -> None:
        super().__init__(functional.pixel_auroc, output_transform)


class PixelAUPRO(_AnomalyEpochMetric):
    """AUPRO of the maps; maps are ``(N, H*W)`` here, so regions are found on the square-rooted shape.

    Args:
        image_size: ``(H, W)`` of the maps, to rebuild connected regions.
        fpr_limit: upper FPR bound of the integral.
    """

    def __init__(self, image_size, fpr_limit: float = 0.3, output_transform: Callable = _pixel_output) -> None:
        size = tuple(np.broadcast_to(np.asarray(image_size), (2,)).tolist())

        def aupro(maps: np.ndarray, masks: np.ndarray) -> float:
            return functional.pixel_aupro(maps.reshape(-1, *size), masks.reshape(-1, *size), fpr_limit)

        super().__init__(aupro, output_transform)
