from .keys import MultiADIterationEvents, MultiADKeys, loss_logs
