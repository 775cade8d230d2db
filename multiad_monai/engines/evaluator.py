"""Evaluator producing anomaly maps and scores for the anomaly metrics and handlers."""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from contextlib import nullcontext

import torch
from monai.engines import Evaluator
from monai.engines.utils import default_metric_cmp_fn
from monai.utils import CommonKeys as Keys
from monai.utils import convert_to_tensor

from multiad_monai.networks.multiad import MultiAD
from multiad_monai.utils import MultiADKeys

__all__ = ["MultiADEvaluator"]


class MultiADEvaluator(Evaluator):
    """Runs a :class:`MultiAD` in eval mode; ``state.output`` holds batched ``image``, ``label``, ``mask``
    (when the batch has one), ``anomaly_map`` ``(N, 1, H, W)`` and ``pred_score`` ``(N,)``.

    Args:
        device: where to run.
        val_data_loader: batches of dicts with ``image`` and ``label`` (and optionally ``mask``).
        network: the :class:`MultiAD` model.

    The other arguments are those of ``monai.engines.SupervisedEvaluator``.
    """

    def __init__(
        self,
        device: torch.device | str,
        val_data_loader: Iterable,
        network: MultiAD,
        epoch_length: int | None = None,
        non_blocking: bool = False,
        key_val_metric: dict | None = None,
        additional_metrics: dict | None = None,
        metric_cmp_fn: Callable = default_metric_cmp_fn,
        val_handlers: Sequence | None = None,
        amp: bool = False,
        amp_kwargs: dict | None = None,
    ) -> None:
        super().__init__(
            device=device,
            val_data_loader=val_data_loader,
            epoch_length=epoch_length,
            non_blocking=non_blocking,
            key_val_metric=key_val_metric,
            additional_metrics=additional_metrics,
            metric_cmp_fn=metric_cmp_fn,
            val_handlers=val_handlers,
            amp=amp,
            decollate=False,
            amp_kwargs=amp_kwargs,
        )
        self.network = network

    def _iteration(self, engine: MultiADEvaluator, batchdata: dict) -> dict:
        if batchdata is None:
            raise ValueError("Must provide batch data for current iteration.")
        device, non_blocking = engine.state.device, engine.non_blocking

        def plain(key: str) -> torch.Tensor:
            # metrics concatenate and gather whole epochs: batched MetaTensor metadata gets in the way
            return convert_to_tensor(batchdata[key], track_meta=False).to(device, non_blocking=non_blocking)

        images = plain(Keys.IMAGE)
        autocast = torch.autocast(device.type, **(engine.amp_kwargs or {})) if engine.amp else nullcontext()
        engine.network.eval()
        with torch.no_grad(), autocast:
            result = engine.network(images)
        output = {
            Keys.IMAGE: images,
            Keys.LABEL: plain(Keys.LABEL).long().view(-1),
            MultiADKeys.ANOMALY_MAP: result.anomaly_map.float(),
            MultiADKeys.PRED_SCORE: result.pred_score.float(),
        }
        if MultiADKeys.MASK in batchdata:
            output[MultiADKeys.MASK] = plain(MultiADKeys.MASK) > 0
        engine.state.output = output
        return output
