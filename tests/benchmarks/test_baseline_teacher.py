"""benchmarks/baseline_teacher.py: the teacher-only baseline builds its mean from the training images of the
calibration split that ``--seed`` picks, as a Multi-AD run with that seed does."""

from __future__ import annotations

import json
import sys

from tests.bundles.helpers import load_benchmark
from tests.conftest import write_mvtec

baseline_teacher = load_benchmark("baseline_teacher")


def _run(monkeypatch, dataset: str, output: str, *extra: str) -> dict:
    argv = ["baseline_teacher.py", "--dataset_dir", dataset, "--image_size", "32", "--output", output, *extra]
    monkeypatch.setattr(sys, "argv", argv)
    baseline_teacher.main()
    with open(output, encoding="utf-8") as f:
        return json.load(f)


def test_seed_selects_the_training_split(tmp_path, monkeypatch):
    dataset = write_mvtec(str(tmp_path / "set"), n_train=12, size=32)
    default = _run(monkeypatch, dataset, str(tmp_path / "default.json"))
    seed0 = _run(monkeypatch, dataset, str(tmp_path / "s0.json"), "--seed", "0")
    seed1 = _run(monkeypatch, dataset, str(tmp_path / "s1.json"), "--seed", "1")
    keys = ("image_auroc", "pixel_auroc", "pixel_aupro")
    assert all(0.0 <= seed1[k] <= 1.0 for k in keys)
    assert [default[k] for k in keys] == [seed0[k] for k in keys]
    # another split holds out other images, so the mean and every pixel's distance to it change
    assert seed1["pixel_auroc"] != seed0["pixel_auroc"]
