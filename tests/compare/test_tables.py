"""Grouping, statistics and tables on synthetic runs (no store)."""

from __future__ import annotations

import math

import numpy as np
import pytest

from multiad_monai.compare import Group, RunRecord, cross_domain_rows, differing_params, group_runs


def _record(dataset: str, domain: str, seed: int, auroc: float, **params) -> RunRecord:
    params = {
        "seed": str(seed),
        "output_dir": f"/tmp/{dataset}{seed}",
        "dataset_dir": f"/tmp/x{seed}/{dataset}",
        **params,
    }
    tags = {"dataset": dataset, "domain": domain, "run_type": "training"}
    metrics = {"image_auroc": auroc, "pixel_auroc": auroc, "pixel_aupro": auroc / 2}
    return RunRecord(f"{dataset}{seed}{params}", "e", "r", "FINISHED", params, tags, metrics)


@pytest.mark.parametrize(
    "params, expected",
    [
        ({"teacher": "a"}, []),
        ({"teacher": "a", "ckpt_path": "/x"}, []),  # paths never differ
        ({"teacher": "a", "n_train": "9"}, []),  # follows from the dataset
        ({"teacher": "b"}, ["teacher"]),
    ],
)
def test_differing_params_leave_out_seeds_paths_and_derived(params, expected):
    runs = [_record("d", "medical", 0, 0.5, teacher="a", n_train="10"), _record("d", "medical", 1, 0.6, **params)]
    assert differing_params(runs) == expected


def test_cross_domain_rows_average_per_domain():
    runs = [
        _record(dataset, domain, seed, value + 0.1 * seed, fusion=fusion)
        for dataset, domain, value in (
            ("brain", "medical", 0.6),
            ("xray", "medical", 0.8),
            ("paper", "industrial", 0.9),
        )
        for fusion in ("sum", "product")
        for seed in (0, 1)
    ]
    columns, params, groups, config_keys = group_runs(runs)
    assert params == ["fusion"] and config_keys == ["fusion"] and len(groups) == 6
    configs, rows = cross_domain_rows(runs, config_keys)
    assert configs == ["fusion=sum", "fusion=product"]
    by_name = {r["dataset"]: r for r in rows}
    assert list(by_name) == ["brain", "xray", "Medical mean", "paper", "Industrial mean"]
    mean, std, n = by_name["brain"]["values"]["fusion=sum"]["image_auroc"]
    assert (mean, n) == (pytest.approx(0.65), 2) and std == pytest.approx(np.std([0.6, 0.7], ddof=1))
    assert by_name["Medical mean"]["values"]["fusion=sum"]["image_auroc"] == (pytest.approx(0.75), None, 2)
    assert by_name["Industrial mean"]["values"]["fusion=product"]["pixel_aupro"][0] == pytest.approx(0.475)
    _, _, grouped, _ = group_runs(runs, ["fusion"])
    assert [len(g.runs) for g in grouped] == [6, 6]


def test_statistics_count_non_finite_values_beside_the_finite_mean():
    values = [0.5, 0.7, math.nan, math.inf, -math.inf]
    group = Group({}, [_record("d", "medical", seed, value) for seed, value in enumerate(values)])
    mean, std, n = group.stats("image_auroc")
    assert (mean, n) == (np.mean([0.5, 0.7]), 2) and std == np.std([0.5, 0.7], ddof=1)
    assert group.nonfinite("image_auroc") == "1 NaN, 1 inf, 1 -inf"
    alone = Group({}, [_record("d", "medical", 0, math.nan), _record("d", "medical", 1, 0.25)])
    assert alone.stats("image_auroc") == (0.25, None, 1) and alone.nonfinite("image_auroc") == "1 NaN"
    assert Group({}, [_record("d", "medical", 0, math.nan)]).stats("image_auroc") is None
    assert alone.stats("not_logged") is None and alone.nonfinite("not_logged") == ""
