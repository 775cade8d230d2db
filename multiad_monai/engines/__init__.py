from .evaluator import MultiADEvaluator
from .trainer import MultiADTrainer
from .utils import MultiADIterationEvents, MultiADKeys, loss_logs
