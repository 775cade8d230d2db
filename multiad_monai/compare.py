"""Compare MLflow runs of the bundles: configurations side by side, seeds as mean ± std, the cross-domain table.

    python -m multiad_monai.compare --tracking_uri sqlite:///runs/cross_domain/mlruns.db --all --output_dir runs/cmp
    python -m multiad_monai.compare --tracking_uri sqlite:///runs/x/mlruns.db multiad_brain multiad_mvtec \\
        --filter "params.image_size = '256'" --group_by teacher

Runs that differ only in ``seed`` (and in paths such as ``output_dir``, ``ckpt_path`` or ``dataset_dir``, the
dataset being identified by the ``dataset`` / ``dataset_fingerprint`` tags of
:class:`multiad_monai.handlers.RunTracker`) form one group, shown as mean ± sample std over its ``n`` runs.
Only the params that differ between the compared runs are shown. The cross-domain table has one row per
dataset (or category) and, per configuration, image AUROC, pixel AUROC and AUPRO, with one mean row per
domain (medical, industrial). Everything is written to ``--output_dir`` as Markdown, CSV, one self-contained
HTML page and PNG charts, and logged as the artifacts of a ``comparison`` run in the same store.
"""

from __future__ import annotations

import argparse
import base64
import csv
import html
import logging
import math
import os
import sys
import time
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field

import mlflow
import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from mlflow.entities import ViewType
from monai.utils import path_to_uri

from multiad_monai.utils.errors import check_writable

__all__ = ["RunRecord", "Group", "Comparison", "load_runs", "compare", "main"]

logger = logging.getLogger(__name__)

METRICS = (
    "image_auroc",
    "pixel_auroc",
    "pixel_aupro",
    "image_f1_max",
    "train_seconds",
    "train_images_per_second",
    "peak_memory_mb",
    "peak_gpu_memory_mb",
)
PAPER_METRICS = {"image_auroc": "image AUROC", "pixel_auroc": "pixel AUROC", "pixel_aupro": "AUPRO"}
LOSS_METRIC = "loss"
SEED_PARAMS = frozenset({"seed"})
# params that follow from others or from the dataset (identified by its tags), never a difference of their own
DERIVED_PARAMS = frozenset({"max_epochs", "epoch_length", "layout", "n_train", "n_test", "category", "mode"})
# identify the run's kind and data; shown as their own columns when they vary, never as params
IDENTITY_KEYS = ("run_type", "bundle", "dataset")
PATH_SUFFIXES = ("_dir", "_path", "_uri", "_root", "_file", "_weights")
COMPARISON_RUN_TYPE = "comparison"
# every run written by this project's bundles carries it (multiad_monai.handlers.RunTracker)
PROJECT_TAG = "multiad_monai_version"


def _metric(value: float) -> float:
    """MLflow stores +-Inf as +-the largest float: read it back as Inf."""
    return math.copysign(math.inf, value) if abs(value) >= sys.float_info.max else value


def is_path_param(key: str) -> bool:
    """Params naming files or folders (``output_dir``, ``ckpt_path``, ``dataset_dir``, ...)."""
    return key.endswith(PATH_SUFFIXES)


@dataclass
class RunRecord:
    """One MLflow run, as read from the store."""

    run_id: str
    experiment: str
    name: str
    status: str
    params: dict[str, str]
    tags: dict[str, str]
    metrics: dict[str, float]
    start_time: int = 0
    end_time: int | None = None

    @property
    def dataset(self) -> str:
        """The ``dataset`` tag, else the last folder of ``dataset_dir`` (and the category)."""
        if self.tags.get("dataset"):
            return self.tags["dataset"]
        name = os.path.basename(os.path.normpath(self.params.get("dataset_dir", "") or "?"))
        category = self.params.get("category", "")
        return f"{name}/{category}" if category not in ("", "None") else name

    @property
    def domain(self) -> str:
        return self.tags.get("domain", "unknown")

    @property
    def run_type(self) -> str:
        if self.tags.get("run_type"):
            return self.tags["run_type"]
        return "evaluation" if self.params.get("mode") == "evaluation" else "training"

    def value(self, key: str) -> str:
        """A param, else a tag, else a run attribute (``dataset``, ``domain``, ``run_type``); ``""`` if absent."""
        if key in self.params:
            return self.params[key]
        if key in self.tags:
            return self.tags[key]
        return str(getattr(self, key, "")) if key in ("dataset", "domain", "run_type") else ""


@dataclass
class Group:
    """Runs that differ only in their seed (or share the ``--group_by`` values)."""

    values: dict[str, str]
    runs: list[RunRecord]
    label: str = ""

    def nonfinite(self, metric: str) -> str:
        """``"1 NaN, 1 inf"``: the runs whose value of ``metric`` is not finite (left out of :meth:`stats`)."""
        values = [r.metrics[metric] for r in self.runs if metric in r.metrics]
        counts = {
            "NaN": sum(math.isnan(v) for v in values),
            "inf": sum(v == math.inf for v in values),
            "-inf": sum(v == -math.inf for v in values),
        }
        return ", ".join(f"{count} {kind}" for kind, count in counts.items() if count)

    def stats(self, metric: str) -> tuple[float, float | None, int] | None:
        """``(mean, sample std or None for a single run, n)`` of a metric over the runs that logged it a finite
        value (the others: :meth:`nonfinite`)."""
        values = [r.metrics[metric] for r in self.runs if metric in r.metrics and math.isfinite(r.metrics[metric])]
        if not values:
            return None
        array = np.asarray(values, dtype=np.float64)
        return float(array.mean()), float(array.std(ddof=1)) if len(array) > 1 else None, len(array)

    @property
    def seeds(self) -> list[str]:
        return sorted({r.params.get("seed", "") for r in self.runs}, key=lambda s: (len(s), s))


@dataclass
class Comparison:
    """What :func:`compare` found and wrote."""

    runs: list[RunRecord]
    columns: list[str]
    param_columns: list[str]
    groups: list[Group]
    metrics: list[str]
    cross_domain: list[dict] = field(default_factory=list)
    files: list[str] = field(default_factory=list)
    run_id: str | None = None
    markdown: str = ""
    skipped: list[RunRecord] = field(default_factory=list)  # runs of other tools in the store


def load_runs(
    client: mlflow.MlflowClient,
    experiments: Sequence[str] | None = None,
    filter_string: str = "",
    include_unfinished: bool = False,
    comparison_experiment: str = "comparison",
) -> list[RunRecord]:
    """Runs of the named experiments (all but the comparison experiment when None), oldest first.

    Raises:
        ValueError: naming an experiment that does not exist, with the ones that do.
    """
    known = {e.name: e for e in client.search_experiments(view_type=ViewType.ACTIVE_ONLY)}
    if experiments:
        missing = [name for name in experiments if name not in known]
        if missing:
            raise ValueError(f"experiments {missing} not found in {client.tracking_uri}; it holds {sorted(known)}")
        chosen = [known[name] for name in experiments]
    else:
        chosen = [e for name, e in known.items() if name != comparison_experiment]
    if not chosen:
        return []
    names = {e.experiment_id: e.name for e in chosen}
    records, token = [], None
    while True:
        page = client.search_runs(
            list(names), filter_string=filter_string, run_view_type=ViewType.ACTIVE_ONLY, max_results=1000,
            order_by=["attributes.start_time ASC"], page_token=token,
        )  # fmt: skip
        for run in page:
            if run.data.tags.get("run_type") == COMPARISON_RUN_TYPE:
                continue
            if run.info.status != "FINISHED" and not include_unfinished:
                continue
            records.append(
                RunRecord(
                    run_id=run.info.run_id,
                    experiment=names[run.info.experiment_id],
                    name=run.info.run_name or run.info.run_id[:8],
                    status=run.info.status,
                    params=dict(run.data.params),
                    tags={k: v for k, v in run.data.tags.items() if not k.startswith("mlflow.")},
                    metrics={k: _metric(v) for k, v in run.data.metrics.items()},
                    start_time=run.info.start_time or 0,
                    end_time=run.info.end_time,
                )
            )
        token = page.token
        if not token:
            return records


def _varying(runs: Sequence[RunRecord], key: str) -> bool:
    return len({r.value(key) for r in runs}) > 1


def differing_params(runs: Sequence[RunRecord]) -> list[str]:
    """Params whose values differ between runs, leaving out seeds, paths and dataset-derived params."""
    keys = sorted({k for r in runs for k in r.params})
    ignored = SEED_PARAMS | DERIVED_PARAMS | set(IDENTITY_KEYS)
    return [k for k in keys if k not in ignored and not is_path_param(k) and _varying(runs, k)]


def _config_keys(runs: Sequence[RunRecord], keys: Sequence[str]) -> list[str]:
    """The keys that tell configurations apart: those varying within a dataset, minus those a ``config`` tag fixes."""
    by_dataset: dict[str, list[RunRecord]] = {}
    for run in runs:
        by_dataset.setdefault(run.dataset, []).append(run)
    chosen = [k for k in keys if k != "dataset" and any(_varying(rs, k) for rs in by_dataset.values())]
    if "config" in chosen:
        by_config: dict[str, list[RunRecord]] = {}
        for run in runs:
            by_config.setdefault(run.value("config"), []).append(run)
        chosen = ["config"] + [k for k in chosen if k != "config" and any(_varying(rs, k) for rs in by_config.values())]
    return chosen


def _label(values: Mapping[str, str], keys: Sequence[str]) -> str:
    parts = [values[k] if k == "config" else f"{k}={values[k]}" for k in keys]
    return ", ".join(parts) or "all runs"


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
        if any(_varying([r for r in runs if r.dataset == d], "dataset_fingerprint") for d in {r.dataset for r in runs}):
            identity.append("dataset_fingerprint")  # same name, different files
        tags = [k for k in ("config",) if any(k in r.tags for r in runs)]
        columns = identity + tags + params
    config_keys = _config_keys(runs, [c for c in columns if c not in ("dataset", "dataset_fingerprint")])
    grouped: dict[tuple[str, ...], list[RunRecord]] = {}
    for run in runs:
        grouped.setdefault(tuple(run.value(c) for c in columns), []).append(run)
    groups = [
        Group(dict(zip(columns, key)), members, _label(dict(zip(columns, key)), config_keys))
        for key, members in grouped.items()
    ]
    first = {label: i for i, label in enumerate(dict.fromkeys(g.label for g in groups))}  # runs come oldest first
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


def _markdown_table(header: Sequence[str], rows: Iterable[Sequence[str]]) -> str:
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
    configs: dict[str, None] = {}
    cells: dict[tuple[str, str], Group] = {}
    domains: dict[str, str] = {}
    for run in training:
        label = _label({k: run.value(k) for k in config_keys}, config_keys)
        configs.setdefault(label)
        domains.setdefault(run.dataset, run.domain)
        cells.setdefault((run.dataset, label), Group({}, [], label)).runs.append(run)
    rows = []
    for domain in sorted(set(domains.values()), key=lambda d: (d != "medical", d != "industrial", d)):
        members = []
        for dataset in sorted(d for d in domains if domains[d] == domain):
            row = {"dataset": dataset, "domain": domain, "values": {}}
            for label in configs:
                group = cells.get((dataset, label))
                row["values"][label] = {m: group.stats(m) if group else None for m in PAPER_METRICS}
            members.append(row)
        mean_row = {"dataset": f"{domain.capitalize()} mean", "domain": domain, "values": {}, "mean_of": len(members)}
        for label in configs:
            mean_row["values"][label] = {}
            for metric in PAPER_METRICS:
                means = [r["values"][label][metric][0] for r in members if r["values"][label][metric]]
                mean_row["values"][label][metric] = (float(np.mean(means)), None, len(means)) if means else None
        rows += [*members, mean_row]
    return list(configs), rows


def cross_domain_table(configs: Sequence[str], rows: Sequence[dict]) -> tuple[list[str], list[list[str]]]:
    """Header and Markdown cells of the cross-domain table: ``mean ± std (n)``; domain means in bold."""
    header = ["dataset", "domain"]
    header += [f"{name} ({c})" if len(configs) > 1 else name for c in configs for name in PAPER_METRICS.values()]
    body = []
    for row in rows:
        is_mean = "mean_of" in row
        cells = [f"**{row['dataset']}**" if is_mean else row["dataset"], row["domain"]]
        for label in configs:
            for metric in PAPER_METRICS:
                stats = row["values"][label][metric]
                # n: seeds of a dataset; a domain mean averages its datasets' means (n datasets, no std)
                cells.append(_format(metric, stats, n=-1) if stats else "–")
        body.append(cells)
    return header, body


def _save(figure: Figure, path: str) -> str:
    FigureCanvasAgg(figure)
    figure.savefig(path, format="png", dpi=100, bbox_inches="tight")
    return path


def metric_charts(configs: Sequence[str], rows: Sequence[dict], output_dir: str) -> list[str]:
    """One grouped bar chart per paper metric: datasets (and domain means) on x, a bar per configuration."""
    paths = []
    for metric, title in PAPER_METRICS.items():
        shown = [r for r in rows if any(r["values"][c][metric] for c in configs)]
        if not shown:
            continue
        figure = Figure(figsize=(max(5.0, 0.55 * len(shown) * max(1, len(configs)) + 2), 4))
        ax = figure.add_subplot()
        width = 0.8 / max(1, len(configs))
        x = np.arange(len(shown))
        for i, label in enumerate(configs):
            stats = [r["values"][label][metric] for r in shown]
            means = [s[0] if s else np.nan for s in stats]
            errors = [s[1] if s and s[1] is not None else 0.0 for s in stats]
            ax.bar(x + (i - (len(configs) - 1) / 2) * width, means, width, yerr=errors, capsize=2, label=label)
        ax.set_xticks(x, [r["dataset"] for r in shown], rotation=45, ha="right", fontsize=8)
        ax.set(ylabel=title, ylim=(0, 1.05), title=f"{title} per dataset (mean ± std over seeds)")
        ax.axhline(0.5, color="grey", linewidth=0.6, linestyle="--")
        if len(configs) > 1:
            ax.legend(fontsize=7, loc="lower left")
        paths.append(_save(figure, os.path.join(output_dir, f"chart_{metric}.png")))
    return paths


def loss_chart(
    client: mlflow.MlflowClient, runs: Sequence[RunRecord], config_keys: Sequence[str], output_dir: str
) -> str | None:
    """Per-iteration training loss of every training run, one panel per dataset, one colour per configuration."""
    training = [r for r in runs if r.run_type == "training" and LOSS_METRIC in r.metrics]
    if not training:
        return None
    datasets = sorted({r.dataset for r in training})
    labels = list(dict.fromkeys(_label({k: r.value(k) for k in config_keys}, config_keys) for r in training))
    colours = {label: f"C{i % 10}" for i, label in enumerate(labels)}
    columns = min(4, len(datasets))
    rows = math.ceil(len(datasets) / columns)
    figure = Figure(figsize=(4 * columns, 3 * rows + 0.4), layout="constrained")
    axes = figure.subplots(rows, columns, squeeze=False)
    for ax in axes.flat[len(datasets) :]:
        ax.axis("off")
    seen: set[str] = set()
    for ax, dataset in zip(axes.flat, datasets):
        for run in (r for r in training if r.dataset == dataset):
            history = sorted(client.get_metric_history(run.run_id, LOSS_METRIC), key=lambda m: m.step)
            label = _label({k: run.value(k) for k in config_keys}, config_keys)
            ax.plot(
                [m.step for m in history], [m.value for m in history], color=colours[label], linewidth=0.8,
                alpha=0.8, label=None if label in seen else label,
            )  # fmt: skip
            seen.add(label)
        ax.set_title(dataset, fontsize=9)
        ax.set_xlabel("iteration", fontsize=8)
        ax.set_ylabel(LOSS_METRIC, fontsize=8)
    if len(labels) > 1:
        figure.legend(loc="outside upper center", ncol=min(4, len(labels)), fontsize=8)
    return _save(figure, os.path.join(output_dir, "training_loss.png"))


def _write_csv(path: str, header: Sequence[str], rows: Iterable[Sequence]) -> str:
    with open(path, "w", newline="", encoding="utf-8") as f:
        writer = csv.writer(f)
        writer.writerow(header)
        writer.writerows(rows)
    return path


def _html_table(header: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    def cell(text: str, tag: str) -> str:
        text = str(text)
        bold = text.startswith("**") and text.endswith("**")
        inner = html.escape(text.strip("*") if bold else text)
        return f"<{tag}>{'<b>' + inner + '</b>' if bold else inner}</{tag}>"

    head = "".join(cell(h, "th") for h in header)
    body = "".join("<tr>" + "".join(cell(c, "td") for c in row) + "</tr>" for row in rows)
    return f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


def _html_page(title: str, sections: Sequence[tuple[str, str]], images: Sequence[str]) -> str:
    style = (
        "body{font-family:sans-serif;margin:2em;color:#222}table{border-collapse:collapse;margin:1em 0;font-size:13px}"
        "th,td{border:1px solid #ccc;padding:3px 8px;text-align:right}th{background:#f3f3f3}"
        "td:first-child,th:first-child{text-align:left}img{max-width:100%;display:block;margin:1em 0}"
    )
    parts = [f"<!DOCTYPE html><html><head><meta charset='utf-8'><title>{html.escape(title)}</title>"]
    parts.append(f"<style>{style}</style></head><body><h1>{html.escape(title)}</h1>")
    for heading, content in sections:
        parts.append(f"<h2>{html.escape(heading)}</h2>{content}")
    for path in images:
        with open(path, "rb") as f:
            data = base64.b64encode(f.read()).decode()
        parts.append(f"<img alt='{html.escape(os.path.basename(path))}' src='data:image/png;base64,{data}'>")
    parts.append("</body></html>")
    return "".join(parts)


def _artifact_location(tracking_uri: str) -> str | None:
    """For a local SQLite store, artifacts go next to the database, as MONAI's MLFlowHandler puts them."""
    if tracking_uri.startswith("sqlite:///"):
        return path_to_uri(os.path.join(os.path.dirname(tracking_uri[len("sqlite:///") :]), "mlruns"))
    return None


def log_comparison(
    client: mlflow.MlflowClient,
    output_dir: str,
    experiment_name: str,
    params: Mapping[str, str],
    tags: Mapping[str, str],
) -> str:
    """Log ``output_dir`` as the artifacts of a new ``comparison`` run; returns its run id."""
    experiment = client.get_experiment_by_name(experiment_name)
    if experiment is None:
        experiment_id = client.create_experiment(experiment_name, _artifact_location(client.tracking_uri))
    else:
        experiment_id = experiment.experiment_id
    run = client.create_run(experiment_id, run_name="comparison", tags={"run_type": COMPARISON_RUN_TYPE, **tags})
    try:
        for key, value in params.items():
            client.log_param(run.info.run_id, key, str(value)[:6000])
        client.log_artifacts(run.info.run_id, output_dir)
    except BaseException:
        client.set_terminated(run.info.run_id, "FAILED")
        raise
    client.set_terminated(run.info.run_id, "FINISHED")
    return run.info.run_id


def compare(
    tracking_uri: str,
    experiments: Sequence[str] | None = None,
    filter_string: str = "",
    group_by: Sequence[str] | None = None,
    output_dir: str = "comparison",
    log: bool = True,
    comparison_experiment: str = "comparison",
    include_unfinished: bool = False,
    metrics: Sequence[str] = METRICS,
    include_foreign: bool = False,
) -> Comparison:
    """Compare the runs of ``experiments`` (None: all) in ``tracking_uri`` and write the reports.

    Args:
        tracking_uri: the MLflow store (``sqlite:////abs/mlruns.db`` or a server URL).
        experiments: experiment names; None or empty for every experiment but ``comparison_experiment``.
        filter_string: MLflow search filter, e.g. ``"params.teacher = 'seresnet50'"``.
        group_by: keys to group by instead of "everything but the seed".
        output_dir: where the Markdown, CSV, HTML and PNG files go.
        log: log the files as artifacts of a run of ``comparison_experiment``.
        include_unfinished: also compare runs that are not FINISHED.
        metrics: metric columns, shown when at least one run logged them.
        include_foreign: also compare runs without this project's ``multiad_monai_version`` tag (other tools
            sharing the store); otherwise they are listed in ``Comparison.skipped``.

    Raises:
        ValueError: when no run matches.
    """
    check_writable(output_dir, "--output_dir", folder=True)  # before reading the store
    client = mlflow.MlflowClient(tracking_uri)
    runs = load_runs(client, experiments, filter_string, include_unfinished, comparison_experiment)
    skipped = [] if include_foreign else [r for r in runs if PROJECT_TAG not in r.tags]
    runs = [r for r in runs if r not in skipped]
    if not runs:
        where = f"experiments {list(experiments)}" if experiments else "any experiment"
        raise ValueError(
            f"no {'' if include_unfinished else 'finished '}runs in {where} of {tracking_uri}"
            + (f" match {filter_string!r}" if filter_string else "")
            + (f"; {_skipped_text(skipped)} (pass --include_foreign to compare them)" if skipped else "")
        )
    columns, param_columns, groups, config_keys = group_runs(runs, group_by)
    shown = [m for m in metrics if any(m in r.metrics for r in runs)]
    os.makedirs(output_dir, exist_ok=True)
    header, rows = runs_table(columns, groups, shown)
    configs, domain_rows = cross_domain_rows(runs, [k for k in config_keys if k != "dataset"])
    domain_header, domain_body = cross_domain_table(configs, domain_rows)
    files = [
        _write_csv(os.path.join(output_dir, "runs.csv"), *_runs_csv(runs)),
        _write_csv(os.path.join(output_dir, "groups.csv"), *_groups_csv(columns, groups, shown)),
        _write_csv(os.path.join(output_dir, "cross_domain.csv"), *_cross_domain_csv(configs, domain_rows)),
    ]
    charts = metric_charts(configs, domain_rows, output_dir)
    loss = loss_chart(client, runs, [k for k in config_keys if k != "dataset"], output_dir)
    charts += [loss] if loss else []
    title = f"Comparison of {len(runs)} runs in {len(groups)} groups"
    summary = (
        f"{len(runs)} runs of {', '.join(sorted({r.experiment for r in runs}))}"
        + (f" matching `{filter_string}`" if filter_string else "")
        + f"; differing params: {', '.join(param_columns) or 'none'}; std is the sample std over seeds"
        + "; NaN and inf values are counted beside the mean of the finite ones."
        + (f" {_skipped_text(skipped)} (--include_foreign compares them)." if skipped else "")
    )
    markdown = "\n\n".join(
        [
            f"# {title}",
            summary,
            "## Runs",
            _markdown_table(header, rows),
            "## Cross-domain table",
            _markdown_table(domain_header, domain_body),
            *[f"![{os.path.basename(p)}]({os.path.basename(p)})" for p in charts],
        ]
    )
    with open(os.path.join(output_dir, "comparison.md"), "w", encoding="utf-8") as f:
        f.write(markdown + "\n")
    page = _html_page(
        title,
        [
            ("Summary", f"<p>{html.escape(summary)}</p>"),
            ("Runs", _html_table(header, rows)),
            ("Cross-domain table", _html_table(domain_header, domain_body)),
        ],
        charts,
    )
    with open(os.path.join(output_dir, "comparison.html"), "w", encoding="utf-8") as f:
        f.write(page)
    files += [os.path.join(output_dir, "comparison.md"), os.path.join(output_dir, "comparison.html"), *charts]
    result = Comparison(
        runs, columns, param_columns, groups, shown, domain_rows, files, markdown=markdown, skipped=skipped
    )
    if log:
        result.run_id = log_comparison(
            client,
            output_dir,
            comparison_experiment,
            params={
                "experiments": ",".join(experiments or []) or "all",
                "filter": filter_string or "",
                "group_by": ",".join(group_by or []) or "seed",
                "n_runs": len(runs),
                "n_groups": len(groups),
            },
            tags={"compared_run_ids": ",".join(r.run_id for r in runs)[:5000]},
        )
    return result


def _skipped_text(skipped: Sequence[RunRecord], n: int = 10) -> str:
    names = ", ".join(f"{r.name} ({r.experiment})" for r in skipped[:n]) + (", ..." if len(skipped) > n else "")
    return f"skipped {len(skipped)} run{'s' * (len(skipped) != 1)} not written by multiad-monai: {names}"


def _runs_csv(runs: Sequence[RunRecord]) -> tuple[list[str], list[list]]:
    params = sorted({k for r in runs for k in r.params})
    tags = sorted({k for r in runs for k in r.tags})
    metrics = sorted({k for r in runs for k in r.metrics})
    header = ["run_id", "experiment", "run_name", "status", "dataset", "domain", "run_type"]
    header += [f"params.{k}" for k in params] + [f"tags.{k}" for k in tags] + [f"metrics.{k}" for k in metrics]
    rows = [
        [r.run_id, r.experiment, r.name, r.status, r.dataset, r.domain, r.run_type]
        + [r.params.get(k, "") for k in params]
        + [r.tags.get(k, "") for k in tags]
        + [r.metrics.get(k, "") for k in metrics]
        for r in runs
    ]
    return header, rows


def _groups_csv(columns: Sequence[str], groups: Sequence[Group], metrics: Sequence[str]) -> tuple[list[str], list]:
    header = [*columns, "n", "seeds", "run_ids"]
    header += [f"{m}_{s}" for m in metrics for s in ("mean", "std", "n", "nonfinite")]
    rows = []
    for group in groups:
        row = [group.values[c] for c in columns] + [len(group.runs), " ".join(group.seeds)]
        row.append(" ".join(r.run_id for r in group.runs))
        for metric in metrics:
            stats = group.stats(metric)
            row += ["", "", 0] if stats is None else [stats[0], "" if stats[1] is None else stats[1], stats[2]]
            row.append(group.nonfinite(metric))
        rows.append(row)
    return header, rows


def _cross_domain_csv(configs: Sequence[str], rows: Sequence[dict]) -> tuple[list[str], list]:
    header = ["dataset", "domain", "configuration"] + [f"{m}_{s}" for m in PAPER_METRICS for s in ("mean", "std", "n")]
    body = []
    for row in rows:
        for label in configs:
            cells = [row["dataset"], row["domain"], label]
            for metric in PAPER_METRICS:
                stats = row["values"][label][metric]
                cells += ["", "", 0] if stats is None else [stats[0], "" if stats[1] is None else stats[1], stats[2]]
            body.append(cells)
    return header, body


def main(argv: Sequence[str] | None = None) -> Comparison:
    """CLI entry point: prints the tables and the output folder."""
    parser = argparse.ArgumentParser(
        prog="python -m multiad_monai.compare",
        description=__doc__.split("\n\n")[0],
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("experiments", nargs="*", help="experiment names (or --all)")
    parser.add_argument("--tracking_uri", required=True, help="e.g. sqlite:////abs/path/mlruns.db or http://host:5000")
    parser.add_argument("--all", action="store_true", help="every experiment of the store (but the comparisons)")
    parser.add_argument("--filter", default="", help="MLflow filter, e.g. \"params.teacher = 'seresnet50'\"")
    parser.add_argument(
        "--group_by", default="", help="comma-separated params/tags to group by (default: all but seed)"
    )
    parser.add_argument("--output_dir", default="comparison", help="folder of the reports (default: ./comparison)")
    parser.add_argument("--comparison_experiment", default="comparison", help="experiment of the comparison run")
    parser.add_argument("--no_log", action="store_true", help="do not log a comparison run")
    parser.add_argument("--include_unfinished", action="store_true", help="also runs that did not finish")
    parser.add_argument(
        "--include_foreign", action="store_true", help="also runs not written by multiad-monai (no version tag)"
    )
    args = parser.parse_args(argv)
    if bool(args.experiments) == args.all:
        parser.error("name the experiments to compare, or pass --all (not both)")
    start = time.perf_counter()
    try:
        result = compare(
            args.tracking_uri,
            None if args.all else args.experiments,
            args.filter,
            [k.strip() for k in args.group_by.split(",") if k.strip()] or None,
            args.output_dir,
            log=not args.no_log,
            comparison_experiment=args.comparison_experiment,
            include_unfinished=args.include_unfinished,
            include_foreign=args.include_foreign,
        )
    except (ValueError, mlflow.exceptions.MlflowException) as e:
        parser.exit(1, f"error: {e}\n")
    print(result.markdown.split("\n\n![")[0])
    where = f"; logged as run {result.run_id} of experiment {args.comparison_experiment!r}" if result.run_id else ""
    print(f"\nreports in {os.path.abspath(args.output_dir)}{where} ({time.perf_counter() - start:.1f} s)")
    return result


if __name__ == "__main__":
    logging.basicConfig(level=logging.WARNING, stream=sys.stderr)
    main()
