"""Finding the per-epoch training checkpoints written by ``monai.handlers.CheckpointSaver``."""

from __future__ import annotations

import glob
import os
import re

from monai.handlers import CheckpointSaver

from multiad_monai.upstream import enable_atomic_save

__all__ = ["AtomicCheckpointSaver", "last_checkpoint"]


def _epoch(path: str) -> int:
    match = re.search(r"epoch=(\d+)", os.path.basename(path))
    return int(match.group(1)) if match else -1


def last_checkpoint(checkpoint_dir: str) -> str | None:
    """The checkpoint of the latest completed epoch in ``checkpoint_dir``, or None."""
    paths = [p for p in glob.glob(os.path.join(checkpoint_dir, "*epoch=*.pt")) if _epoch(p) >= 0]
    return max(paths, key=_epoch) if paths else None


class AtomicCheckpointSaver(CheckpointSaver):
    """``monai.handlers.CheckpointSaver`` that writes through a temporary file and a rename.

    MONAI turns ignite's atomic saving off (for file permissions, which ignite now sets itself), so a run
    killed while saving would leave a truncated checkpoint that a resume then fails to read.
    """

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        enable_atomic_save(self)
