"""ArchiveTriage in one process: resume by checkpoint SHA-256, a killed run's ledger, unreadable studies."""

from __future__ import annotations

import csv
import json
import os
import shutil

import numpy as np
import pytest
from PIL import Image

from multiad_monai.archive_triage import ArchiveTriage, study_key
from multiad_monai.checkpoint import checkpoint_sha256, load_model
from multiad_monai.inference import AnomalyInferer, list_inputs
from tests.triage_data import tiny_checkpoints, write_archive


@pytest.fixture(scope="module")
def archive(tmp_path_factory) -> str:
    """Four NIfTI volumes and three PNG images (one batch of two, then one)."""
    root = write_archive(str(tmp_path_factory.mktemp("triage") / "archive"), n_volumes=4, dicom=False)
    rng = np.random.default_rng(0)
    for name in ("img_a.png", "img_b.png", "img_c.png"):
        Image.fromarray((rng.random((40, 40)) * 255).astype(np.uint8)).save(os.path.join(root, name))
    return root


@pytest.fixture(scope="module")
def checkpoints(tmp_path_factory, archive) -> tuple[str, str]:
    return tiny_checkpoints(str(tmp_path_factory.mktemp("ckpt")), archive)


class CountingInferer(AnomalyInferer):
    """Records which inputs it scored, chunk by chunk."""

    def __init__(self, ckpt_path: str) -> None:
        super().__init__(load_model(ckpt_path), batch_size=2, checkpoint=ckpt_path)
        self.scored: list[list[str]] = []

    def write_results(self, inputs, names, out):
        self.scored.append([names[item] for item in inputs])
        return super().write_results(inputs, names, out)


def _table(folder) -> list[dict]:
    with open(os.path.join(folder, "scores.csv"), encoding="utf-8") as f:
        return list(csv.DictReader(f))


def _scored(inferer: CountingInferer) -> list[str]:
    return sorted(name for chunk in inferer.scored for name in chunk)


ALL = sorted([f"case{i}" for i in range(4)] + ["img_a", "img_b", "img_c"])


def test_rerun_skips_the_same_checkpoint_and_rescores_with_another(archive, checkpoints, tmp_path):
    model, other = checkpoints
    out = str(tmp_path / "out")
    first = CountingInferer(model)
    records = ArchiveTriage(first)(archive, out)
    assert _scored(first) == ALL
    assert ["img_a", "img_b"] in first.scored and ["img_c"] in first.scored  # 2D images share batches
    assert [r.normalized_score for r in records] == sorted((r.normalized_score for r in records), reverse=True)
    table = _table(out)
    assert [row["rank"] for row in table] == [str(i) for i in range(1, 8)]
    assert {row["checkpoint_sha256"] for row in table} == {checkpoint_sha256(model)}
    assert {f"{row['output']}_overlay.png" for row in table} <= set(os.listdir(out))
    assert "worklist.html" in os.listdir(out)

    again = CountingInferer(model)
    ArchiveTriage(again)(archive, out)
    assert again.scored == [] and _table(out) == table

    retrained = CountingInferer(other)
    ArchiveTriage(retrained)(archive, out)
    assert _scored(retrained) == ALL
    rescored = _table(out)
    assert {row["checkpoint_sha256"] for row in rescored} == {checkpoint_sha256(other)}
    assert {row["output"]: row["score"] for row in rescored} == {row["output"]: row["score"] for row in table}
    assert [row["normalized_score"] for row in rescored] != [row["normalized_score"] for row in table]


def test_a_killed_run_resumes_with_what_is_missing(archive, checkpoints, tmp_path):
    """A run killed after three studies, the fourth's line half written: the rerun scores the other four."""
    model, _ = checkpoints
    ArchiveTriage(CountingInferer(model))(archive, str(tmp_path / "full"))
    lines = open(tmp_path / "full" / "ledger" / "rank0.jsonl", encoding="utf-8").read().splitlines()
    os.makedirs(tmp_path / "killed" / "ledger")
    with open(tmp_path / "killed" / "ledger" / "rank0.jsonl", "w", encoding="utf-8") as f:
        f.write("\n".join(lines[:3]) + "\n" + lines[3][:25])
    done = [json.loads(line)["output"] for line in lines[:3]]
    for name in os.listdir(tmp_path / "full"):
        if any(name.startswith(f"{stem}_") for stem in done):
            shutil.copy(tmp_path / "full" / name, tmp_path / "killed" / name)

    resumed = CountingInferer(model)
    ArchiveTriage(resumed)(archive, str(tmp_path / "killed"))
    assert _scored(resumed) == sorted(set(ALL) - set(done))
    assert _table(tmp_path / "killed") == _table(tmp_path / "full")


def test_an_unreadable_study_is_listed_and_the_others_ranked(archive, checkpoints, tmp_path):
    model, _ = checkpoints
    broken = str(tmp_path / "archive")
    shutil.copytree(archive, broken)
    with open(os.path.join(broken, "case9.nii.gz"), "wb") as f:
        f.write(b"not a volume")
    out = str(tmp_path / "out")
    with pytest.raises(RuntimeError, match=r"1 of 8 studies could not be scored \(.*case9.nii.gz: .*the 7 scored"):
        ArchiveTriage(CountingInferer(model))(broken, out)
    assert len(_table(out)) == 7
    assert "Not scored (1)" in open(os.path.join(out, "worklist.html"), encoding="utf-8").read()

    os.remove(os.path.join(broken, "case9.nii.gz"))  # the fix: remove (or repair) it, rerun the same command
    rerun = CountingInferer(model)
    ArchiveTriage(rerun)(broken, out)
    assert rerun.scored == [] and len(_table(out)) == 7


def test_study_keys_are_absolute_paths_and_series_uids(archive):
    keys = [study_key(item) for item in list_inputs(archive)]
    assert keys[0] == os.path.join(os.path.abspath(archive), "case0.nii.gz") and len(set(keys)) == len(keys)


def test_an_inferer_without_its_checkpoint_file_is_refused(checkpoints):
    with pytest.raises(ValueError, match="checkpoint=ckpt_path"):
        ArchiveTriage(AnomalyInferer(load_model(checkpoints[0])))
