from .atomic import atomic_write, staged_dir
from .errors import check_flags, check_path, readable_errors, root_message
from .keys import MultiADIterationEvents, MultiADKeys, loss_logs
