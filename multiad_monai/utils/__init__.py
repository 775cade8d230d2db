from .atomic import atomic_write, staged_dir
from .errors import check_flags, check_path, check_writable, readable_errors, root_message
from .finite import listing, nonfinite_tensors
from .keys import MultiADIterationEvents, MultiADKeys, loss_logs
