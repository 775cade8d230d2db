from multiad_monai.utils import MultiADIterationEvents, MultiADKeys, loss_logs

from .distributed import broadcast_buffers, parameter_checksum, unwrap_ddp, wrap_ddp
from .evaluator import MultiADEvaluator
from .trainer import MultiADTrainer
