from __future__ import annotations

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from torch import nn

from multiad_monai.engines import broadcast_buffers

pytestmark = pytest.mark.slow  # two processes (torch.multiprocessing, gloo)


class Banked(nn.Module):
    def __init__(self):
        super().__init__()
        self.register_buffer("mean", torch.zeros(3))
        self.inner = nn.Module()
        self.inner.register_buffer("bank", torch.empty(0, 2))  # sized by calibration, like the nearest prior's bank


def _broadcast_and_report(rank: int, init_file: str, results) -> None:
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=2)
    network = Banked()
    if rank == 0:  # rank 0 alone calibrates
        network.mean.fill_(1.0)
        network.inner.bank = torch.arange(8.0).reshape(4, 2)
    broadcast_buffers(network)
    results[rank] = {name: buffer.tolist() for name, buffer in network.named_buffers()}
    dist.destroy_process_group()


def test_broadcast_buffers_gives_every_rank_rank_zeros_buffers_even_resized_ones(tmp_path):
    results = mp.Manager().dict()
    mp.spawn(_broadcast_and_report, args=(str(tmp_path / "init"), results), nprocs=2)
    expected = {"mean": [1.0] * 3, "inner.bank": [[0.0, 1.0], [2.0, 3.0], [4.0, 5.0], [6.0, 7.0]]}
    assert results[1] == results[0] == expected
