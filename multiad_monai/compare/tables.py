"""Grouping runs into configurations, their statistics over seeds (pandas), and the tables and CSV files."""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from functools import cached_property

import numpy as np
import pandas as pd

from multiad_monai.compare.runs import RunRecord

__all__ = [
    "Group",
    "group_runs",
    "differing_params",
    "runs_table",
    "cross_domain_rows",
    "cross_domain_table",
    "markdown_table",
    "runs_frame",
    "groups_frame",
    "cross_domain_frame",
    "write_csv",
]

PAPER_METRICS = {"image_auroc": "image AUROC", "pixel_auroc": "pixel AUROC", "pixel_aupro": "AUPRO"}
SEED_PARAMS = frozenset({"seed"})
# params that follow from others or from the dataset (identified by its tags), never a difference of their own
DERIVED_PARAMS = frozenset({"max_epochs", "epoch_length", "layout", "n_train", "n_test", "category", "mode"})
# identify the run's kind and data; shown as their own columns when they vary, never as params
IDENTITY_KEYS = ("run_type", "bundle", "dataset")
PATH_SUFFIXES = ("_dir", "_path", "_uri", "_root", "_file", "_weights")
_NONFINITE = {"NaN": math.nan, "inf": math.inf, "-inf": -math.inf}


def is_path_param(key: str) -> bool:
    """Params naming files or folders (``output_dir``, ``ckpt_path``, ``dataset_dir``, ...)."""
    return key.endswith(PATH_SUFFIXES)


def _finite_mean(values: pd.Series) -> float:
    finite = values.dropna().to_numpy()
    return finite.mean() if len(finite) else math.nan


def _finite_std(values: pd.Series) -> float:
    finite = values.dropna().to_numpy()
    return finite.std(ddof=1) if len(finite) > 1 else math.nan


def metric_stats(runs: Sequence[RunRecord]) -> pd.DataFrame:
    """Per metric the runs logged: ``mean``, sample ``std`` (NaN for one value) and ``n`` of the finite values,
    and the counts of ``NaN``, ``inf`` and ``-inf`` values (left out of the mean, never dropped silently).
    numpy's mean and std, not pandas' compensated sums: the same digits as the runs' own numpy statistics."""
    values = pd.DataFrame(
        [(metric, value) for run in runs for metric, value in run.metrics.items()], columns=["metric", "value"]
    ).astype({"value": np.float64})
    values = values.assign(
        finite=values["value"].where(np.isfinite(values["value"])),
        **{kind: values["value"].isna() if kind == "NaN" else values["value"] == v for kind, v in _NONFINITE.items()},
    )
    return values.groupby("metric", sort=False).agg(
        mean=("finite", _finite_mean),
        std=("finite", _finite_std),
        n=("finite", "count"),
        **{kind: (kind, "sum") for kind in _NONFINITE},
    )


@dataclass
class Group:
    """Runs that differ only in their seed (or share the ``--group_by`` values)."""

    values: dict[str, str]
    runs: list[RunRecord]
    label: str = ""

    @cached_property
    def table(self) -> pd.DataFrame:
        """:func:`metric_stats` of the group's runs."""
        return metric_stats(self.runs)

    def nonfinite(self, metric: str) -> str:
        """``"1 NaN, 1 inf"``: the runs whose value of ``metric`` is not finite (left out of :meth:`stats`)."""
        if metric not in self.table.index:
            return ""
        row = self.table.loc[metric]
        return ", ".join(f"{int(row[kind])} {kind}" for kind in _NONFINITE if row[kind])

    def stats(self, metric: str) -> tuple[float, float | None, int] | None:
        """``(mean, sample std or None for a single run, n)`` of a metric over the runs that logged it a finite
        value (the others: :meth:`nonfinite`)."""
        if metric not in self.table.index or not self.table.at[metric, "n"]:
            return None
        row = self.table.loc[metric]
        return float(row["mean"]), None if row["n"] < 2 else float(row["std"]), int(row["n"])

    @property
    def seeds(self) -> list[str]:
        return sorted({r.params.get("seed", "") for r in self.runs}, key=lambda s: (len(s), s))


def _varying(runs: Sequence[RunRecord], key: str) -> bool:
    return len({r.value(key) for r in runs}) > 1


def differing_params(runs: Sequence[RunRecord]) -> list[str]:
    """Params whose values differ between runs, leaving out seeds, paths and dataset-derived params."""
    keys = sorted({k for r in runs for k in r.params})
    ignored = SEED_PARAMS | DERIVED_PARAMS | set(IDENTITY_KEYS)
    return [k for k in keys if k not in ignored and not is_path_param(k) and _varying(runs, k)]


def _by(runs: Sequence[RunRecord], key) -> list[list[RunRecord]]:
    grouped: dict[str, list[RunRecord]] = {}
    for run in runs:
        grouped.setdefault(key(run), []).append(run)
    return list(grouped.values())


def _config_keys(runs: Sequence[RunRecord], keys: Sequence[str]) -> list[str]:
    """The keys that tell configurations apart: those varying within a dataset, minus those a ``config`` tag fixes."""
    by_dataset = _by(runs, lambda r: r.dataset)
    chosen = [k for k in keys if k != "dataset" and any(_varying(rs, k) for rs in by_dataset)]
    if "config" in chosen:
        by_config = _by(runs, lambda r: r.value("config"))
        chosen = ["config"] + [k for k in chosen if k != "config" and any(_varying(rs, k) for rs in by_config)]
    return chosen


def label(values: Mapping[str, str], keys: Sequence[str]) -> str:
    """The name of a configuration: its ``config`` tag and ``key=value`` of the other keys."""
    parts = [values[k] if k == "config" else f"{k}={values[k]}" for k in keys]
    return ", ".join(parts) or "all runs"


def run_label(run: RunRecord, keys: Sequence[str]) -> str:
    return label({k: run.value(k) for k in keys}, keys)


def group_runs(
    runs: Sequence[RunRecord], group_by: Sequence[str] | None = None
) -> tuple[list[str], list[str], list[Group], list[str]]:
    """Group the runs.

    Args:
        runs: the runs to compare.
        group_by: keys (params or tags) to group by; None: everything that differs except the seed.

    Returns:
        ``(columns, param_columns, groups, config_keys)``: the key columns of the table, the differing params
        among them, the groups sorted by dataset and configuration, and the keys naming a configuration.
    """
    params = differing_params(runs)
    if group_by:
        columns = list(group_by)
    else:
        identity = [k for k in IDENTITY_KEYS if k == "dataset" or _varying(runs, k)]
        if any(_varying(rs, "dataset_fingerprint") for rs in _by(runs, lambda r: r.dataset)):
            identity.append("dataset_fingerprint")  # same name, different files
        tags = [k for k in ("config",) if any(k in r.tags for r in runs)]
        columns = identity + tags + params
    config_keys = _config_keys(runs, [c for c in columns if c not in ("dataset", "dataset_fingerprint")])
    groups = []
    for members in _by(runs, lambda r: tuple(r.value(c) for c in columns)):
        values = {c: members[0].value(c) for c in columns}
        groups.append(Group(values, members, label(values, config_keys)))
    first = {name: i for i, name in enumerate(dict.fromkeys(g.label for g in groups))}  # runs come oldest first
    groups.sort(key=lambda g: (g.runs[0].dataset if "dataset" in columns else "", first[g.label]))
    return columns, [c for c in columns if c in params], groups, config_keys


def _format(metric: str, stats: tuple[float, float | None, int] | None, n: int, nonfinite: str = "") -> str:
    if stats is None:
        return nonfinite or "–"
    mean, std, count = stats
    digits = 3 if metric in PAPER_METRICS or metric == "image_f1_max" else (0 if "memory" in metric else 1)
    text = f"{mean:.{digits}f}" + (f" ± {std:.{digits}f}" if std is not None else "")
    if nonfinite:
        return text + f" ({count} finite; {nonfinite})"
    return text + (f" ({count})" if count != n else "")


def markdown_table(header: Sequence[str], rows: Iterable[Sequence[str]]) -> str:
    def clean(cell: str) -> str:
        return str(cell).replace("|", "\\|")

    lines = ["| " + " | ".join(clean(h) for h in header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(clean(c) for c in row) + " |" for row in rows]
    return "\n".join(lines)


def runs_table(columns: Sequence[str], groups: Sequence[Group], metrics: Sequence[str]) -> tuple[list[str], list[list]]:
    """Header and rows of the side-by-side table: key columns, ``n``, seeds, ``mean ± std`` per metric."""
    header = [*columns, "n", "seeds", *metrics]
    rows = []
    for group in groups:
        n = len(group.runs)
        cells = [group.values[c] for c in columns] + [str(n), ",".join(group.seeds)]
        rows.append(cells + [_format(m, group.stats(m), n, group.nonfinite(m)) for m in metrics])
    return header, rows


def cross_domain_rows(runs: Sequence[RunRecord], config_keys: Sequence[str]) -> tuple[list[str], list[dict]]:
    """The paper's table: one row per dataset, ``{config: {metric: (mean, std, n)}}``, then per-domain means.

    Training runs are used (evaluation runs when there are none). A domain mean is the mean over its datasets
    of the per-dataset means (over seeds), for each metric the datasets report.
    """
    training = [r for r in runs if r.run_type == "training"] or list(runs)
    configs = list(dict.fromkeys(run_label(r, config_keys) for r in training))
    by_cell = _by(training, lambda r: (r.dataset, run_label(r, config_keys)))
    cells = {(rs[0].dataset, run_label(rs[0], config_keys)): Group({}, rs) for rs in by_cell}
    domains: dict[str, str] = {}
    for run in training:
        domains.setdefault(run.dataset, run.domain)
    rows = []
    for domain in sorted(set(domains.values()), key=lambda d: (d != "medical", d != "industrial", d)):
        members = []
        for dataset in sorted(d for d in domains if domains[d] == domain):
            row = {"dataset": dataset, "domain": domain, "values": {}}
            for name in configs:
                group = cells.get((dataset, name))
                row["values"][name] = {m: group.stats(m) if group else None for m in PAPER_METRICS}
            members.append(row)
        mean_row = {"dataset": f"{domain.capitalize()} mean", "domain": domain, "values": {}, "mean_of": len(members)}
        for name in configs:
            mean_row["values"][name] = {}
            for metric in PAPER_METRICS:
                means = [r["values"][name][metric][0] for r in members if r["values"][name][metric]]
                mean_row["values"][name][metric] = (float(np.mean(means)), None, len(means)) if means else None
        rows += [*members, mean_row]
    return configs, rows


def cross_domain_table(configs: Sequence[str], rows: Sequence[dict]) -> tuple[list[str], list[list[str]]]:
    """Header and Markdown cells of the cross-domain table: ``mean ± std (n)``; domain means in bold."""
    header = ["dataset", "domain"]
    header += [f"{name} ({c})" if len(configs) > 1 else name for c in configs for name in PAPER_METRICS.values()]
    body = []
    for row in rows:
        is_mean = "mean_of" in row
        cells = [f"**{row['dataset']}**" if is_mean else row["dataset"], row["domain"]]
        for config in configs:
            for metric in PAPER_METRICS:
                stats = row["values"][config][metric]
                # n: seeds of a dataset; a domain mean averages its datasets' means (n datasets, no std)
                cells.append(_format(metric, stats, n=-1) if stats else "–")
        body.append(cells)
    return header, body


def _stats_cells(stats: tuple[float, float | None, int] | None) -> list:
    return ["", "", 0] if stats is None else [stats[0], "" if stats[1] is None else stats[1], stats[2]]


def runs_frame(runs: Sequence[RunRecord]) -> pd.DataFrame:
    """One row per run: identity, then ``params.*``, ``tags.*`` and ``metrics.*`` (empty when absent)."""
    keys = {part: sorted({k for r in runs for k in getattr(r, part)}) for part in ("params", "tags", "metrics")}
    header = ["run_id", "experiment", "run_name", "status", "dataset", "domain", "run_type"]
    header += [f"{part}.{k}" for part, names in keys.items() for k in names]
    rows = [
        [r.run_id, r.experiment, r.name, r.status, r.dataset, r.domain, r.run_type]
        + [getattr(r, part).get(k, "") for part, names in keys.items() for k in names]
        for r in runs
    ]
    return pd.DataFrame(rows, columns=header, dtype=object)


def groups_frame(columns: Sequence[str], groups: Sequence[Group], metrics: Sequence[str]) -> pd.DataFrame:
    """One row per group: key columns, ``n``, seeds, run ids, and per metric mean, std, n and non-finite counts."""
    header = [*columns, "n", "seeds", "run_ids"]
    header += [f"{m}_{s}" for m in metrics for s in ("mean", "std", "n", "nonfinite")]
    rows = []
    for group in groups:
        row = [group.values[c] for c in columns] + [len(group.runs), " ".join(group.seeds)]
        row.append(" ".join(r.run_id for r in group.runs))
        for metric in metrics:
            row += [*_stats_cells(group.stats(metric)), group.nonfinite(metric)]
        rows.append(row)
    return pd.DataFrame(rows, columns=header, dtype=object)


def cross_domain_frame(configs: Sequence[str], rows: Sequence[dict]) -> pd.DataFrame:
    """One row per dataset (and domain mean) and configuration: mean, std and n of each paper metric."""
    header = ["dataset", "domain", "configuration"] + [f"{m}_{s}" for m in PAPER_METRICS for s in ("mean", "std", "n")]
    body = [
        [row["dataset"], row["domain"], config]
        + [cell for metric in PAPER_METRICS for cell in _stats_cells(row["values"][config][metric])]
        for row in rows
        for config in configs
    ]
    return pd.DataFrame(body, columns=header, dtype=object)


def write_csv(frame: pd.DataFrame, path: str) -> str:
    """``frame`` as CSV (NaN written ``nan``, absent values empty, as Python's csv module writes them)."""
    frame.to_csv(path, index=False, na_rep="nan", lineterminator="\r\n")
    return path
