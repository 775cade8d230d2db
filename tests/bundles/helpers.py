"""Running the users' own `python -m monai.bundle run ...` commands from the tests."""

from __future__ import annotations

import os
import subprocess
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def bundle_file(bundle: str, name: str) -> str:
    return os.path.join(ROOT, "bundles", bundle, name)


def bundle_command(bundle: str, run_id: str, out: str, *args: str, configs=("train.json",), launcher=()) -> list[str]:
    """``python -m monai.bundle run <run_id> --config_file ... --output_dir out --ckpt_path out/model.pt``."""
    files = [bundle_file(bundle, c) for c in configs]
    config = files[0] if len(files) == 1 else "[" + ",".join(f"'{f}'" for f in files) + "]"
    return [
        *(launcher or [sys.executable]), "-m", "monai.bundle", "run", *([run_id] if run_id else []),
        "--config_file", config, "--bundle_root", os.path.join(ROOT, "bundles", bundle),
        "--output_dir", out, "--ckpt_path", os.path.join(out, "model.pt"), *args,
    ]  # fmt: skip


def run(command: list[str], timeout: int = 600) -> subprocess.CompletedProcess:
    return subprocess.run(command, cwd=ROOT, capture_output=True, text=True, timeout=timeout)
