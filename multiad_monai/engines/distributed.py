"""DistributedDataParallel for Multi-AD: the two trained parts are wrapped, the frozen teacher is not."""

from __future__ import annotations

import torch
from torch import nn
from torch.nn.parallel import DistributedDataParallel

from multiad_monai.networks.multiad import MultiAD
from multiad_monai.upstream import module_with_children

__all__ = ["wrap_ddp", "unwrap_ddp", "parameter_checksum", "broadcast_buffers"]


def wrap_ddp(network: MultiAD, device: torch.device | str) -> MultiAD:
    """Wrap the student and the discriminator in DDP, in place; returns ``network``.

    Buffers are not broadcast, so rank 0 can calibrate and evaluate alone without collective calls.
    """
    device = torch.device(device)
    device_ids = [device.index] if device.type == "cuda" else None
    for name in ("student", "discriminator"):
        module = getattr(network, name)
        setattr(network, name, DistributedDataParallel(module, device_ids=device_ids, broadcast_buffers=False))
    return network


def unwrap_ddp(network: nn.Module) -> nn.Module:
    """A shallow view of ``network`` with its DDP children replaced by their modules.

    It shares every parameter and buffer with ``network``, so saving it gives the single-process state-dict
    keys and loading into it restores the wrapped model (resume).
    """
    children = {name: getattr(child, "module", child) for name, child in network.named_children()}
    return module_with_children(network, children)


def parameter_checksum(module: nn.Module) -> float:
    """Sum of all parameters in float64: equal across ranks when DDP kept the replicas in sync."""
    return float(sum(p.detach().double().sum() for p in module.parameters()))


def broadcast_buffers(network: nn.Module, src: int = 0) -> None:
    """Give every rank the buffers of rank ``src``, which alone calibrated after training.

    The distributed evaluation then scores every shard of the test set with the same teacher prior, fusion
    statistics, re-estimated batch-norm statistics and, where chosen, the same bank of normal features (whose size
    only ``src`` knows). A collective call: every rank must make it.
    """
    buffers = dict(network.named_buffers())
    shapes = [{name: tuple(buffer.shape) for name, buffer in buffers.items()}]
    torch.distributed.broadcast_object_list(shapes, src)
    for name, shape in shapes[0].items():
        buffer = buffers[name]
        if tuple(buffer.shape) != shape:  # calibration sizes some buffers (the nearest prior's bank) on `src` alone
            owner, _, attribute = name.rpartition(".")
            buffer = buffer.new_empty(shape)
            setattr(network.get_submodule(owner), attribute, buffer)
        contiguous = buffer.data.contiguous()  # gloo/NCCL need contiguous tensors (channels-last buffers are not)
        torch.distributed.broadcast(contiguous, src)
        buffer.data.copy_(contiguous)
