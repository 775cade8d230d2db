"""Running the bundles from the tests: in-process through ``monai.bundle.run`` (the function behind the users'
``python -m monai.bundle run ...``), and as a real command line for the tests about the command line itself."""

from __future__ import annotations

import importlib.util
import os
import subprocess
import sys
from types import ModuleType

from monai.bundle import run as run_bundle_workflow

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def load_benchmark(name: str) -> ModuleType:
    """Import ``benchmarks/<name>.py`` (not a package) as module ``name``; registered, as dataclasses look it up."""
    spec = importlib.util.spec_from_file_location(name, os.path.join(ROOT, "benchmarks", f"{name}.py"))
    module = sys.modules[name] = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def bundle_file(bundle: str, name: str) -> str:
    return name if os.path.isabs(name) else os.path.join(ROOT, "bundles", bundle, name)


def _config(bundle: str, configs) -> str | list[str]:
    files = [bundle_file(bundle, c) for c in configs]
    return files[0] if len(files) == 1 else files


def run_in_process(bundle: str, run_id: str | None, configs=("train.json",), **overrides) -> None:
    """``python -m monai.bundle run <run_id> --config_file ... --key value ...``, without a new interpreter.

    The bundles' macros name ``bundles/common/...`` relative to the repository root, as the users run them.
    """
    cwd = os.getcwd()
    os.chdir(ROOT)
    try:
        run_bundle_workflow(run_id=run_id, config_file=_config(bundle, configs), **overrides)
    finally:
        os.chdir(cwd)


def bundle_command(bundle: str, run_id: str, out: str, *args: str, configs=("train.json",), launcher=()) -> list[str]:
    """``python -m monai.bundle run <run_id> --config_file ... --output_dir out *args``."""
    config = _config(bundle, configs)
    config = config if isinstance(config, str) else "[" + ",".join(f"'{f}'" for f in config) + "]"
    return [
        *(launcher or [sys.executable]), "-m", "monai.bundle", "run", *([run_id] if run_id else []),
        "--config_file", config, "--output_dir", out, *args,
    ]  # fmt: skip


def error_chain(error: BaseException | None) -> str:
    """Every message of an exception and its causes (the bundle parser wraps the real error)."""
    messages = []
    while error is not None:
        messages.append(str(error))
        error = error.__cause__ or error.__context__
    return "\n".join(messages)


def run(command: list[str], timeout: int = 600) -> subprocess.CompletedProcess:
    return subprocess.run(
        command, cwd=ROOT, capture_output=True, text=True, encoding="utf-8", errors="replace", timeout=timeout
    )
