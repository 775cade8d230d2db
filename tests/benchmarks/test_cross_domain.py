"""benchmarks/cross_domain.py: the plan, and one real run that a second invocation skips."""

from __future__ import annotations

import mlflow
import pytest

from tests.bundles.helpers import load_benchmark
from tests.conftest import write_mvtec

cross_domain = load_benchmark("cross_domain")


@pytest.fixture(scope="module")
def data_root(tmp_path_factory) -> str:
    root = tmp_path_factory.mktemp("bench")
    write_mvtec(str(root / "piped_paper" / "paper_a"), n_train=6, n_good=2, n_bad=2)
    write_mvtec(str(root / "piped_paper" / "paper_b"), n_train=6, n_good=2, n_bad=2)
    write_mvtec(str(root / "piped_paper" / "no_defects"), n_train=6, n_good=2, n_bad=0)
    write_mvtec(str(root / "chest"), n_train=6, n_good=2, n_bad=2, masks=False)
    return str(root)


@pytest.mark.parametrize(
    "specs, expected",
    [
        (["multiad", "distill"], {"multiad": [], "distill": ["--adversarial_weight", "0.0"]}),
        (["big:image_size=256,epochs=3"], {"big": ["--image_size", "256", "--epochs", "3"]}),
    ],
)
def test_configs(specs, expected):
    assert cross_domain.parse_configs(specs) == expected


@pytest.mark.parametrize("spec", ["nope", "x:epochs"])
def test_bad_configs_say_what_is_expected(spec):
    with pytest.raises(ValueError, match="NAME:KEY=VALUE|KEY=VALUE"):
        cross_domain.parse_configs([spec])


def test_plan_covers_categories_with_defects_configs_and_seeds(data_root):
    configs = cross_domain.parse_configs(["multiad", "distill"])
    runs = cross_domain.plan(
        data_root, ["piped_paper", "chest=mvtec:medical"], None, configs, [0, 1], ["--epochs", "1"]
    )
    assert len(runs) == (2 + 1) * 2 * 2  # no_defects is left out
    assert {r.category for r in runs if r.dataset == "piped_paper"} == {"paper_a", "paper_b"}
    assert {(r.bundle, r.domain) for r in runs if r.dataset == "chest"} == {("mvtec", "medical")}
    assert (
        runs[0].args == ["--invert_masks", "True", "--epochs", "1"]
        and runs[0].name == "piped_paper/paper_a/multiad/seed0"
    )
    assert len({r.key for r in runs}) == len(runs)
    only = cross_domain.plan(data_root, ["piped_paper"], ["paper_b"], configs, [0], [])
    assert [r.category for r in only] == ["paper_b", "paper_b"]


@pytest.mark.slow
def test_a_finished_run_is_skipped_the_next_time(data_root, tmp_path, capsys):
    argv = ["--data_root", data_root, "--datasets", "chest=mvtec:medical", "--configs", "distill", "--seeds", "0",
            "--output_dir", str(tmp_path), "--", "--epochs", "1", "--max_iterations", "8",
            "--image_size", "32"]  # fmt: skip
    # a killed earlier attempt left an epoch checkpoint: the repeated run replaces it instead of stopping
    leftover = tmp_path / "runs" / "chest" / "distill" / "seed0" / "checkpoints"
    leftover.mkdir(parents=True)
    killed = leftover / "checkpoint_epoch=1.pt"
    killed.write_bytes(b"killed")
    assert cross_domain.main(argv) == 0
    assert not killed.exists() or killed.read_bytes() != b"killed"
    first = capsys.readouterr().out
    assert "chest/distill/seed0: ok" in first and "| chest | distill |" in first and "**Medical mean**" in first
    assert cross_domain.main(argv) == 0
    assert "chest/distill/seed0: finished before, skipped" in capsys.readouterr().out
    client = mlflow.MlflowClient("sqlite:///" + str(tmp_path / "mlruns.db"))
    (run,) = client.search_runs([client.get_experiment_by_name("cross_domain").experiment_id])
    assert run.data.tags["config"] == "distill" and run.data.tags["domain"] == "medical"
    assert run.data.params["adversarial_weight"] == "0.0"
    assert len(client.search_runs([client.get_experiment_by_name("comparison").experiment_id])) == 2
