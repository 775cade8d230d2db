"""Fill the model's normal-score statistics after training, so the checkpoint is self-contained."""

from __future__ import annotations

import logging
from collections.abc import Iterable

import torch
from ignite.engine import Engine, Events
from monai.utils import CommonKeys as Keys
from monai.utils import convert_to_tensor
from torch.optim.swa_utils import update_bn

from multiad_monai.data.datasets import cached_teacher_features
from multiad_monai.handlers.divergence import DivergenceError
from multiad_monai.networks.multiad import MultiAD
from multiad_monai.utils.finite import listing, nonfinite_tensors

__all__ = ["CalibrationHandler"]


class CalibrationHandler:
    """On ``COMPLETED``, finalise the trained model so that its checkpoint is self-contained.

    1. The student's batch-norm running statistics are recomputed over the training images
       (``torch.optim.swa_utils.update_bn``): the anomaly map is computed in eval mode, and running averages
       collected while the weights were still moving describe an older network.
    2. With a teacher prior (``Recipe.prior_weight > 0``), the mean normal teacher feature at each location is
       taken over the training images (with ``Recipe.prior_reference`` ``"nearest"`` or ``"auto"`` also a bank
       of their features; ``"auto"`` keeps it only where it fits the held-out images clearly better), and both map
       components are standardised on the held-out images (with ``fusion="standardized"`` each scale of the
       student map first, see ``AnomalyMapGenerator.fit_scales``); with ``Recipe.adaptive_prior`` the student map
       on as many training images sets the prior's gain.
    3. The network is run on held-out normal images and their score statistics are stored in its buffers.

    Args:
        network: the trained :class:`MultiAD`.
        data_loader: normal images not used for training (batches of dicts with ``image``).
        train_data_loader: all training images, for the batch-norm statistics (skipped when None; a short last
            batch is left out of them) and the teacher prior.
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
        network, head = self.network, self.network.anomaly_map
        device = next(network.parameters()).device

        def image(batch: dict) -> torch.Tensor:
            return convert_to_tensor(batch[Keys.IMAGE], track_meta=False).to(device)

        def images(loader: Iterable):
            return (image(b) for b in loader)

        def full_batches(loader: Iterable):  # update_bn averages batches alike: a short last one would count fully
            size = None
            for x in images(loader):
                size = size or len(x)
                if len(x) == size:
                    yield x

        def teacher_features(batch: dict) -> list[torch.Tensor]:  # cached with the training images when they are
            cached = cached_teacher_features(batch, device)
            return cached if cached is not None else network.teacher(image(batch))

        def student_train_maps(count: int) -> torch.Tensor:  # on the first `count` (at least a batch of) images
            maps, seen = [], 0
            for b in self.train_data_loader:
                x = image(b)
                maps.append(head.student_map(teacher_features(b), network.student(x), x.shape[-2:]))
                seen += len(x)
                if seen >= count:
                    break
            return torch.cat(maps)

        if self.train_data_loader is not None:
            update_bn(full_batches(self.train_data_loader), network.student)
        network.eval()
        # the held-out images and their teacher features, once: the prior's reference and the maps below use them
        held_out = [(x, network.teacher(x)) for x in images(self.data_loader)]
        if head.has_prior:
            if self.train_data_loader is None:
                raise ValueError("a model with a teacher prior needs train_data_loader to fit the prior")
            head.fit_prior(teacher_features(b) for b in self.train_data_loader)
            if head.prior_reference == "auto":
                ratio = head.fit_reference(teacher for _, teacher in held_out)
                reference = "nearest normal feature" if head.uses_nearest else "mean normal feature"
                self.logger.info(f"teacher prior: nearest / mean distance {ratio:.3f} -> {reference}")
        # one pass over the held-out images: the student's per-scale maps (to fit the scales, then fused) and the prior
        scale_maps, prior_maps = [], []
        for x, teacher in held_out:
            scale_maps.append(head.scale_maps(teacher, network.student(x), x.shape[-2:]))
            if head.has_prior:
                prior_maps.append(head.prior_map(teacher, x.shape[-2:]))
        scale_maps = torch.cat(scale_maps, dim=1)
        head.fit_scales(scale_maps)
        student_maps = head.fuse_student(scale_maps)
        prior_maps = torch.cat(prior_maps) if head.has_prior else None
        if head.has_prior:
            train_maps = student_train_maps(len(student_maps)) if head.adaptive_prior else None
            gain = head.fit_fusion(student_maps, prior_maps, train_maps)
            self.logger.info(f"teacher prior: weight {head.prior_weight:g} x gain {gain:.2f}")
        maps, scores = head.combine(student_maps, prior_maps)
        network.calibrate(scores.float().cpu(), maps.float().cpu())
        bad = nonfinite_tensors(network.state_dict())
        if bad:  # e.g. batch-norm statistics recomputed from a student whose weights overflow
            raise DivergenceError(
                f"after calibration {listing(bad)} {'is' if len(bad) == 1 else 'are'} not finite: the student "
                "diverged in training; rerun with a lower --learning_rate and --overwrite True. The model was not saved"
            )
        self.logger.info(
            f"calibrated on {len(scores)} normal images: image threshold "
            f"{self.network.image_threshold.item():.4f}, pixel threshold {self.network.pixel_threshold.item():.4f}"
        )
