"""Integration: archive triage with ``multi_gpu_inference.json``, one process and a real 2-process torchrun (gloo)."""

from __future__ import annotations

import csv
import os
import socket
import sys

import pytest

from tests.bundles.helpers import bundle_command, run, run_in_process
from tests.triage_data import tiny_checkpoints, write_archive

pytest.importorskip("pydicom")
pytest.importorskip("itk")
pytest.importorskip("highdicom")

pytestmark = pytest.mark.slow  # runs the bundle, in one process and with torchrun

CONFIGS = ("inference.json", "multi_gpu_inference.json")


@pytest.fixture(scope="module")
def archive(tmp_path_factory) -> str:
    """Six NIfTI volumes and a CT series in ``patient/ct/``: seven studies."""
    return write_archive(str(tmp_path_factory.mktemp("triage_bundle") / "archive"))


@pytest.fixture(scope="module")
def ckpt(tmp_path_factory, archive) -> str:
    return tiny_checkpoints(str(tmp_path_factory.mktemp("ckpt")), archive)[0]


@pytest.fixture(scope="module")
def one_process(tmp_path_factory, archive, ckpt) -> str:
    out = str(tmp_path_factory.mktemp("one_process"))
    run_in_process("brain", None, CONFIGS, ckpt_path=ckpt, input_path=archive, output_dir=out)
    return out


def _table(folder) -> list[dict]:
    with open(os.path.join(folder, "scores.csv"), encoding="utf-8") as f:
        return list(csv.DictReader(f))


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_two_processes_give_the_one_process_worklist_and_a_rerun_skips_all(archive, ckpt, one_process, tmp_path):
    out = str(tmp_path / "out")
    launcher = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node=2", f"--master_port={_free_port()}"]
    command = bundle_command(
        "brain", None, out, "--ckpt_path", ckpt, "--input_path", archive, configs=CONFIGS, launcher=launcher
    )
    result = run(command)
    log = result.stdout + result.stderr
    assert result.returncode == 0, log[-4000:]
    assert "rank 0/2: 4 of 7 studies" in log and "rank 1/2: 3 of 7 studies" in log
    assert log.count("7 studies ranked in") == 1  # rank 0 alone merges
    lines = {rank: open(os.path.join(out, "ledger", f"rank{rank}.jsonl")).read().splitlines() for rank in (0, 1)}
    assert (len(lines[0]), len(lines[1])) == (4, 3)

    two, one = _table(out), _table(one_process)
    assert len(two) == 7 and [r["image"] for r in two] == [r["image"] for r in one]
    for a, b in zip(two, one):
        assert float(a["score"]) == pytest.approx(float(b["score"]), abs=1e-6 + 1e-12)
        assert {k: a[k] for k in a if k != "score"} == {k: b[k] for k in b if k != "score"}
    (series,) = [r for r in two if r["series_uid"]]
    assert series["series"] == "7_AX_CT" and series["image"] == os.path.join(archive, "patient", "ct")
    names = set(os.listdir(out))
    assert {"worklist.html", "7_AX_CT_seg.dcm", "7_AX_CT_heatmap.dcm", "case0_map.nii.gz"} <= names
    assert {f"{r['output']}_overlay.png" for r in two} <= names

    # the same command in one process finds every study in the two ranks' ledgers: nothing is rescored
    stamp = os.stat(os.path.join(out, "case0_map.nii.gz")).st_mtime_ns
    run_in_process("brain", None, CONFIGS, ckpt_path=ckpt, input_path=archive, output_dir=out)
    assert _table(out) == two and os.stat(os.path.join(out, "case0_map.nii.gz")).st_mtime_ns == stamp
