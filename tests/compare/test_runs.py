"""Reading a store: this project's runs only, non-finite metrics read back as such; the CLI's early errors."""

from __future__ import annotations

import csv

import mlflow
import pytest

from multiad_monai.compare import main
from multiad_monai.handlers.mlflow_tags import run_tags
from tests.conftest import write_mvtec


def test_compare_reads_only_this_projects_runs_and_shows_non_finite_metrics(tmp_path, capsys):
    """A store shared with another tool: its runs are skipped by name; NaN and Inf metrics are counted, not
    averaged away or printed as MLflow's stand-in for infinity (the largest float)."""
    uri = "sqlite:///" + str(tmp_path / "mlruns.db")
    client = mlflow.MlflowClient(uri)
    ours = client.create_experiment("multiad_mvtec")
    tags = {**run_tags("bundles/mvtec", write_mvtec(str(tmp_path / "bottle")), device="cpu"), "run_type": "training"}
    for seed, auroc in ((0, 0.9), (1, float("nan")), (2, float("inf"))):
        run = client.create_run(ours, run_name=f"seed{seed}", tags=tags)
        client.log_param(run.info.run_id, "seed", seed)
        client.log_metric(run.info.run_id, "image_auroc", auroc)
        client.log_metric(run.info.run_id, "pixel_auroc", 0.8 + seed / 100)
        client.set_terminated(run.info.run_id)
    foreign = client.create_run(client.create_experiment("other_project"), run_name="their_run")
    client.log_metric(foreign.info.run_id, "image_auroc", 0.5)
    client.set_terminated(foreign.info.run_id)

    result = main(["--tracking_uri", uri, "--all", "--output_dir", str(tmp_path / "cmp"), "--no_log"])
    printed = capsys.readouterr().out
    assert [r.name for r in result.runs] == ["seed0", "seed1", "seed2"]
    assert [r.name for r in result.skipped] == ["their_run"]
    assert "skipped 1 run not written by multiad-monai: their_run (other_project)" in printed
    assert "| 3 | 0,1,2 | 0.900 (1 finite; 1 NaN, 1 inf) | 0.810 ± 0.010 |" in printed, printed
    assert "1797693" not in printed and "e+308" not in printed
    groups = list(csv.DictReader(open(tmp_path / "cmp" / "groups.csv", encoding="utf-8")))
    assert groups[0]["image_auroc_n"] == "1" and groups[0]["image_auroc_nonfinite"] == "1 NaN, 1 inf"

    everything = main(
        ["--tracking_uri", uri, "--all", "--include_foreign", "--output_dir", str(tmp_path / "all"), "--no_log"]
    )
    assert len(everything.runs) == 4 and not everything.skipped


def test_compare_refuses_an_output_dir_it_cannot_write_before_reading_the_store(tmp_path, capsys):
    (tmp_path / "taken").write_text("a file")
    uri = "sqlite:///" + str(tmp_path / "missing.db")
    with pytest.raises(SystemExit) as exit_info:
        main(["--tracking_uri", uri, "--all", "--output_dir", str(tmp_path / "taken"), "--no_log"])
    last = capsys.readouterr().err.strip().splitlines()[-1]
    assert (
        exit_info.value.code == 1
        and last == f"error: --output_dir {tmp_path / 'taken'} is a file, not a folder: pass another --output_dir"
    )
    assert not (tmp_path / "missing.db").exists()  # the store was not even opened
