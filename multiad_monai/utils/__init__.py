from .atomic import atomic_write, staged_dir
from .keys import MultiADIterationEvents, MultiADKeys, loss_logs
