"""Fill the model's normal-score statistics after training, so the checkpoint is self-contained."""

from __future__ import annotations

import logging
from collections.abc import Iterable

import torch
from ignite.engine import Engine, Events
from monai.utils import CommonKeys as Keys
from monai.utils import convert_to_tensor
from torch.optim.swa_utils import update_bn

from multiad_monai.networks.multiad import MultiAD

__all__ = ["CalibrationHandler"]


class CalibrationHandler:
    """On ``COMPLETED``, finalise the trained model so that its checkpoint is self-contained.

    1. The student's batch-norm running statistics are recomputed over the training images
       (``torch.optim.swa_utils.update_bn``): the anomaly map is computed in eval mode, and running averages
       collected while the weights were still moving describe an older network.
    2. The network is run on held-out normal images and their score statistics are stored in its buffers.

    Args:
        network: the trained :class:`MultiAD`.
        data_loader: normal images not used for training (batches of dicts with ``image``).
        train_data_loader: the training images, for the batch-norm statistics (skipped when None).
        event: when to calibrate; defaults to the end of training.
    """

    def __init__(
        self,
        network: MultiAD,
        data_loader: Iterable,
        train_data_loader: Iterable | None = None,
        event: Events = Events.COMPLETED,
    ) -> None:
        self.network = network
        self.data_loader = data_loader
        self.train_data_loader = train_data_loader
        self.event = event
        self.logger = logging.getLogger(__name__)

    def attach(self, engine: Engine) -> None:
        engine.add_event_handler(self.event, self)

    @torch.no_grad()
    def __call__(self, engine: Engine) -> None:
        device = next(self.network.parameters()).device
        if self.train_data_loader is not None:
            images = (convert_to_tensor(b[Keys.IMAGE], track_meta=False).to(device) for b in self.train_data_loader)
            update_bn(images, self.network.student)
        self.network.eval()
        scores, maps = [], []
        for batch in self.data_loader:
            result = self.network(convert_to_tensor(batch[Keys.IMAGE], track_meta=False).to(device))
            scores.append(result.pred_score.float().cpu())
            maps.append(result.anomaly_map.float().cpu())
        self.network.calibrate(torch.cat(scores), torch.cat(maps))
        self.logger.info(
            f"calibrated on {len(torch.cat(scores))} normal images: image threshold "
            f"{self.network.image_threshold.item():.4f}, pixel threshold {self.network.pixel_threshold.item():.4f}"
        )
