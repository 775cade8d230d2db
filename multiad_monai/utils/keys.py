"""Output keys, custom events and loss logging shared by the engines, metrics and handlers."""

from __future__ import annotations

from ignite.engine import EventEnum
from monai.utils import StrEnum

__all__ = ["MultiADKeys", "MultiADIterationEvents", "loss_logs"]


class MultiADKeys(StrEnum):
    """Keys of ``engine.state.output`` (besides MONAI's ``image``, ``label``, ``loss``)."""

    MASK = "mask"
    ANOMALY_MAP = "anomaly_map"
    PRED_SCORE = "pred_score"
    DISTILLATION_LOSS = "distillation_loss"
    ADVERSARIAL_LOSS = "adversarial_loss"
    DISCRIMINATOR_LOSS = "discriminator_loss"
    TEACHER_FEATURES = "teacher_features"


class MultiADIterationEvents(EventEnum):
    """Stages of one Multi-AD training iteration, fired in this order."""

    STUDENT_FORWARD_COMPLETED = "student_forward_completed"
    STUDENT_LOSS_COMPLETED = "student_loss_completed"
    STUDENT_BACKWARD_COMPLETED = "student_backward_completed"
    DISCRIMINATOR_LOSS_COMPLETED = "discriminator_loss_completed"
    DISCRIMINATOR_BACKWARD_COMPLETED = "discriminator_backward_completed"


def loss_logs(output: dict) -> dict[str, float]:
    """The scalar losses of a training output, for StatsHandler / MLFlowHandler ``output_transform``."""
    keys = ("loss", MultiADKeys.DISTILLATION_LOSS, MultiADKeys.ADVERSARIAL_LOSS, MultiADKeys.DISCRIMINATOR_LOSS)
    return {str(k): float(output[k]) for k in keys if k in output}
