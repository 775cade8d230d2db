"""When to stop training: the student's distance to the teacher on held-out normal images, and its gap.

:func:`student_distance` is the signal; :class:`~multiad_monai.handlers.HeldOutStopping` applies the rule.
"""

from __future__ import annotations

from collections.abc import Iterable

import torch
from monai.utils import CommonKeys as Keys
from monai.utils import convert_to_tensor
from torch.nn.modules.batchnorm import _BatchNorm

from multiad_monai.data.datasets import cached_teacher_features
from multiad_monai.networks.anomaly_map import cosine_distance
from multiad_monai.networks.multiad import MultiAD

__all__ = ["student_distance"]


@torch.no_grad()
def student_distance(network: MultiAD, batches: Iterable[dict], max_images: int | None = None) -> float:
    """The student's mean ``1 - cos`` to the teacher over the pixels of every scale.

    The student runs as calibration will see it: eval mode (no stochastic depth), but with each batch's own
    batch-norm statistics, which calibration's recomputed running statistics approximate; running averages
    collected while the weights moved describe an older student. Nothing of the network changes.

    Args:
        network: the model being trained (left in the mode it was in).
        batches: dicts with ``image`` and optionally cached ``teacher_features``.
        max_images: stop after at least this many images (None: all).
    """
    was_training = network.training
    network.eval()
    norms = [m for m in network.student.modules() if isinstance(m, _BatchNorm)]
    saved = [(m.momentum, m.num_batches_tracked.clone()) for m in norms]
    for m in norms:  # batch statistics, running statistics untouched
        m.train()
        m.momentum = 0.0
    device = next(network.student.parameters()).device
    total, seen = 0.0, 0
    try:
        for batch in batches:
            images = convert_to_tensor(batch[Keys.IMAGE], track_meta=False).to(device)
            teacher = cached_teacher_features(batch, device) or network.teacher(images)
            student = network.student(images)
            # each scale counts equally, as in the distillation loss
            per_image = torch.stack([cosine_distance(t, s).flatten(1).mean(1) for t, s in zip(teacher, student)])
            total += float(per_image.float().mean(0).sum())
            seen += len(images)
            if max_images is not None and seen >= max_images:
                break
    finally:
        for m, (momentum, tracked) in zip(norms, saved):
            m.momentum = momentum
            m.num_batches_tracked.copy_(tracked)
        network.train(was_training)
    if not seen:
        raise ValueError("no images to measure the student's distance on")
    return total / seen
