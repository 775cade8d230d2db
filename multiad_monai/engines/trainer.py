"""The Multi-AD training step: student distillation + adversarial step, then the discriminator step."""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from contextlib import nullcontext

import torch
import torch.nn.functional as F
from monai.engines import Trainer
from monai.engines.utils import default_metric_cmp_fn, default_prepare_batch
from monai.utils import CommonKeys as Keys
from torch.optim import Optimizer

from multiad_monai.data.datasets import cached_teacher_features
from multiad_monai.losses import AdversarialLoss, DistillationLoss
from multiad_monai.networks.multiad import MultiAD
from multiad_monai.utils import MultiADIterationEvents, MultiADKeys

__all__ = ["MultiADTrainer", "random_square_crop"]

# crop offsets are multiples of the deepest feature stride, so that each feature map crops exactly
CROP_ALIGN = 16


def random_square_crop(
    images: torch.Tensor, teacher_features: list[torch.Tensor] | None, generator: torch.Generator
) -> tuple[torch.Tensor, list[torch.Tensor] | None]:
    """A random square of a batch of long images ``(N, C, H, W)``, side ``min(H, W)`` (rounded down to a multiple
    of :data:`CROP_ALIGN`), and the same region of their teacher features; square images are returned as they are.
    """
    height, width = images.shape[-2:]
    side = min(height, width) // CROP_ALIGN * CROP_ALIGN
    if height == width or side == 0:
        return images, teacher_features

    def offset(size: int) -> int:
        return CROP_ALIGN * int(torch.randint(0, (size - side) // CROP_ALIGN + 1, (), generator=generator))

    top, left = offset(height), offset(width)
    images = images[..., top : top + side, left : left + side]
    if teacher_features is not None:
        cropped = []
        for feature in teacher_features:
            stride = height // feature.shape[-2]
            y, x, size = top // stride, left // stride, side // stride
            cropped.append(feature[..., y : y + size, x : x + size])
        teacher_features = cropped
    return images, teacher_features


class MultiADTrainer(Trainer):
    """Trains the student of a :class:`MultiAD` to match its frozen teacher, with a feature discriminator.

    Batches may carry the teacher's features of their images (``teacher_features``, cached once per image when
    inputs are not augmented); the teacher then does not run. Each iteration: (1) the student minimises
    ``distillation + adversarial_weight * BCE(D(student), real)``;
    (2) the discriminator minimises ``BCE(D(teacher), real) + BCE(D(student.detach()), fake)``. With
    ``adversarial_weight=0`` the discriminator is not trained (pure distillation). AMP and fp32 share one path.
    Stabilisers: ``label_smoothing``, ``feature_matching`` and a warm-up of the adversarial weight here, spectral
    norm in the discriminator (:class:`~multiad_monai.recipe.Recipe` ``discriminator_spectral_norm``).

    Args:
        device: where the batch and the network live.
        max_epochs: number of epochs.
        train_data_loader: batches of dicts with an ``image`` ``(N, 3, H, W)`` in ``[0, 1]``.
        network: the :class:`MultiAD` model.
        optimizer: optimiser of the student's parameters.
        discriminator_optimizer: optimiser of the discriminator's parameters.
        adversarial_weight: weight of the student's adversarial loss (0, the bundles' default: pure distillation;
            0.1 is the paper's, ``--preset paper`` in the bundles).
        adversarial_warmup_iterations: the student's adversarial weight ramps linearly from 0 to
            ``adversarial_weight`` over this many iterations, while the discriminator trains from the start; read
            from ``state.iteration``, so a resumed run continues the ramp.
        label_smoothing: one-sided: the discriminator's target for teacher features is ``1 - label_smoothing``.
        feature_matching: the student's adversarial loss matches the batch mean of the discriminator's pooled
            features of teacher and student (squared error, Salimans et al. 2016) instead of fooling its logit.
        distillation_loss: defaults to ``DistillationLoss(hard_ratio=0.1)``, as the bundles.
        amp: autocast + gradient scaling (bf16 autocast on CPU).
        square_crops: the student trains on a random square of long (non-square) images, the region of their
            cached teacher features as its target (:func:`random_square_crop`; the offsets follow the iteration,
            so a resumed run draws the same): a 500x1250 scan costs a square's step instead of 2.5 times that.

    The other arguments are those of ``monai.engines.SupervisedTrainer``.
    """

    def __init__(
        self,
        device: torch.device | str,
        max_epochs: int,
        train_data_loader: Iterable,
        network: MultiAD,
        optimizer: Optimizer,
        discriminator_optimizer: Optimizer,
        adversarial_weight: float = 0.0,
        adversarial_warmup_iterations: int = 0,
        distillation_loss: Callable | None = None,
        label_smoothing: float = 0.0,
        feature_matching: bool = False,
        epoch_length: int | None = None,
        non_blocking: bool = False,
        prepare_batch: Callable = default_prepare_batch,
        key_train_metric: dict | None = None,
        additional_metrics: dict | None = None,
        metric_cmp_fn: Callable = default_metric_cmp_fn,
        train_handlers: Sequence | None = None,
        amp: bool = False,
        square_crops: bool = False,
        optim_set_to_none: bool = False,
        to_kwargs: dict | None = None,
        amp_kwargs: dict | None = None,
    ) -> None:
        super().__init__(
            device=device,
            max_epochs=max_epochs,
            data_loader=train_data_loader,
            epoch_length=epoch_length,
            non_blocking=non_blocking,
            prepare_batch=prepare_batch,
            key_metric=key_train_metric,
            additional_metrics=additional_metrics,
            metric_cmp_fn=metric_cmp_fn,
            handlers=train_handlers,
            amp=amp,
            event_names=[MultiADIterationEvents],
            decollate=False,
            to_kwargs=to_kwargs,
            amp_kwargs=amp_kwargs,
        )
        self.network = network
        self.optimizer = optimizer
        self.discriminator_optimizer = discriminator_optimizer
        self.adversarial_weight = adversarial_weight
        if adversarial_warmup_iterations < 0:
            raise ValueError(f"adversarial_warmup_iterations must be >= 0, got {adversarial_warmup_iterations}")
        self.adversarial_warmup_iterations = adversarial_warmup_iterations
        self.distillation_loss = distillation_loss or DistillationLoss(hard_ratio=0.1)
        self.adversarial_loss = AdversarialLoss()
        if not 0.0 <= label_smoothing < 0.5:
            raise ValueError(f"label_smoothing must be in [0, 0.5), got {label_smoothing}")
        self.discriminator_loss = AdversarialLoss(real_label=1.0 - label_smoothing)
        self.feature_matching = feature_matching
        device_type = torch.device(device).type
        self.student_scaler = torch.amp.GradScaler(device_type, enabled=amp)
        self.discriminator_scaler = torch.amp.GradScaler(device_type, enabled=amp)
        self.optim_set_to_none = optim_set_to_none
        self.square_crops = square_crops

    def _autocast(self):
        if not self.amp:
            return nullcontext()
        return torch.autocast(self.state.device.type, **(self.amp_kwargs or {}))

    def student_adversarial_weight(self) -> float:
        """The adversarial weight of the current iteration (``state.iteration`` counts from 1)."""
        ramp = (
            min(1.0, (self.state.iteration - 1) / self.adversarial_warmup_iterations)
            if self.adversarial_warmup_iterations
            else 1.0
        )
        return self.adversarial_weight * ramp

    @staticmethod
    def _step(loss: torch.Tensor, scaler: torch.amp.GradScaler, optimizer: Optimizer) -> None:
        scaler.scale(loss).backward()
        scaler.step(optimizer)
        scaler.update()

    def _iteration(self, engine: MultiADTrainer, batchdata: dict) -> dict:
        if batchdata is None:
            raise ValueError("Must provide batch data for current iteration.")
        images = engine.prepare_batch(batchdata, engine.state.device, engine.non_blocking, **engine.to_kwargs)[0]
        cached = cached_teacher_features(batchdata, engine.state.device, engine.non_blocking)
        if engine.square_crops:
            generator = torch.Generator().manual_seed(engine.state.iteration)
            images, cached = random_square_crop(images, cached, generator)
        network = engine.network
        network.train()
        output: dict = {Keys.IMAGE: images}
        engine.state.output = output

        # student step
        engine.optimizer.zero_grad(set_to_none=engine.optim_set_to_none)
        with engine._autocast():
            features = network(images, cached)
            engine.fire_event(MultiADIterationEvents.STUDENT_FORWARD_COMPLETED)
            distillation = engine.distillation_loss(features.teacher, features.student)
            loss = distillation
            if engine.adversarial_weight > 0:
                # the student is judged on its own batch (as a DCGAN generator is); feeding the discriminator
                # teacher + student here too cut lgg_dev image AUROC from 0.779 to 0.709 (24 epochs, seed 0)
                if engine.feature_matching:
                    real, fake = network.discriminator(
                        torch.cat([features.teacher[-1].detach(), features.student[-1]]), embed=True
                    ).split(len(images))
                    adversarial = F.mse_loss(fake.float().mean(0), real.float().mean(0).detach())
                else:
                    fake_logits = network.discriminator(features.student[-1])
                    adversarial = engine.adversarial_loss(fake_logits, is_teacher=True)
                loss = distillation + engine.student_adversarial_weight() * adversarial
                output[MultiADKeys.ADVERSARIAL_LOSS] = adversarial.detach()
        output[MultiADKeys.DISTILLATION_LOSS] = distillation.detach()
        output[Keys.LOSS] = loss.detach()
        engine.fire_event(MultiADIterationEvents.STUDENT_LOSS_COMPLETED)
        engine._step(loss, engine.student_scaler, engine.optimizer)
        engine.fire_event(MultiADIterationEvents.STUDENT_BACKWARD_COMPLETED)

        # discriminator step, on detached features
        if engine.adversarial_weight > 0:
            engine.discriminator_optimizer.zero_grad(set_to_none=engine.optim_set_to_none)
            with engine._autocast():
                # one forward over teacher (real) and student (fake) features: one DDP pass per backward
                real, fake = features.teacher[-1].detach(), features.student[-1].detach()
                real_logits, fake_logits = network.discriminator(torch.cat([real, fake])).split(len(real))
                d_loss = 0.5 * (
                    engine.discriminator_loss(real_logits, is_teacher=True)
                    + engine.discriminator_loss(fake_logits, is_teacher=False)
                )
            output[MultiADKeys.DISCRIMINATOR_LOSS] = d_loss.detach()
            engine.fire_event(MultiADIterationEvents.DISCRIMINATOR_LOSS_COMPLETED)
            engine._step(d_loss, engine.discriminator_scaler, engine.discriminator_optimizer)
            engine.fire_event(MultiADIterationEvents.DISCRIMINATOR_BACKWARD_COMPLETED)
        return output
