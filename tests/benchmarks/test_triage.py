"""benchmarks/triage.py: its parts that need no bundle run (the run itself is what the triage bundle tests cover)."""

from __future__ import annotations

import argparse
import os
import sys

import nibabel as nib
import pytest

from tests.bundles.helpers import load_benchmark

triage = load_benchmark("triage")


@pytest.mark.parametrize("text, expected", [("1", (1, None)), ("2", (2, None)), ("1x1", (1, 1)), ("4x2", (4, 2))])
def test_runs_are_processes_and_threads(text, expected):
    assert triage.parse_run(text) == expected


@pytest.mark.parametrize("text", ["0", "x1", "2x", "two"])
def test_bad_runs_are_refused(text):
    with pytest.raises(argparse.ArgumentTypeError, match="expected N or NxT"):
        triage.parse_run(text)


def test_archive_is_seeded_volumes_of_the_given_shape(tmp_path):
    triage.write_archive(str(tmp_path), 3, (16, 12, 6))
    assert sorted(os.listdir(tmp_path)) == ["study000.nii.gz", "study001.nii.gz", "study002.nii.gz"]
    assert nib.load(tmp_path / "study001.nii.gz").shape == (16, 12, 6)


def test_commands_use_torchrun_for_several_processes():
    one = triage.triage_command(1, "brain", "m.pt", "in", "out", [])
    two = triage.triage_command(2, "brain", "m.pt", "in", "out", ["--batch_size", "8"])
    assert one[:4] == [sys.executable, "-m", "monai.bundle", "run"]
    assert two[:5] == [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2"]
    assert "['bundles/brain/inference.json','bundles/brain/multi_gpu_inference.json']" in two
    assert two[-2:] == ["--batch_size", "8"]


def test_scoring_time_spans_the_first_rank_start_to_the_merge():
    log = (
        "2026-01-01 10:00:00,000 - multiad_monai.archive_triage - INFO - rank 1/2: 1 of 3 studies\n"
        "2026-01-01 10:00:00,500 - multiad_monai.archive_triage - INFO - rank 0/2: 2 of 3 studies\n"
        "2026-01-01 10:00:07,250 - multiad_monai.archive_triage - INFO - 3 studies ranked in out/scores.csv\n"
    )
    assert triage._scoring_seconds(log) == pytest.approx(7.25)
    assert triage._scoring_seconds("no triage lines") is None
