"""``compare``: read the runs, group them, write the Markdown, CSV, HTML and PNG files, log a comparison run."""

from __future__ import annotations

import html
import os
from collections.abc import Sequence
from dataclasses import dataclass, field

import mlflow

from multiad_monai.compare.render import html_page, html_table, loss_chart, metric_charts
from multiad_monai.compare.runs import RunRecord, load_runs, log_comparison, skipped_text, split_foreign
from multiad_monai.compare.tables import (
    Group,
    cross_domain_frame,
    cross_domain_rows,
    cross_domain_table,
    group_runs,
    groups_frame,
    markdown_table,
    runs_frame,
    runs_table,
    write_csv,
)
from multiad_monai.utils.errors import check_writable

__all__ = ["Comparison", "compare", "METRICS"]

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
    runs, skipped = (runs, []) if include_foreign else split_foreign(runs)
    if not runs:
        where = f"experiments {list(experiments)}" if experiments else "any experiment"
        raise ValueError(
            f"no {'' if include_unfinished else 'finished '}runs in {where} of {tracking_uri}"
            + (f" match {filter_string!r}" if filter_string else "")
            + (f"; {skipped_text(skipped)} (pass --include_foreign to compare them)" if skipped else "")
        )
    columns, param_columns, groups, config_keys = group_runs(runs, group_by)
    config_keys = [k for k in config_keys if k != "dataset"]
    shown = [m for m in metrics if any(m in r.metrics for r in runs)]
    os.makedirs(output_dir, exist_ok=True)
    header, rows = runs_table(columns, groups, shown)
    configs, domain_rows = cross_domain_rows(runs, config_keys)
    domain_header, domain_body = cross_domain_table(configs, domain_rows)
    files = [
        write_csv(runs_frame(runs), os.path.join(output_dir, "runs.csv")),
        write_csv(groups_frame(columns, groups, shown), os.path.join(output_dir, "groups.csv")),
        write_csv(cross_domain_frame(configs, domain_rows), os.path.join(output_dir, "cross_domain.csv")),
    ]
    charts = metric_charts(configs, domain_rows, output_dir)
    loss = loss_chart(client, runs, config_keys, output_dir)
    charts += [loss] if loss else []
    title = f"Comparison of {len(runs)} runs in {len(groups)} groups"
    summary = (
        f"{len(runs)} runs of {', '.join(sorted({r.experiment for r in runs}))}"
        + (f" matching `{filter_string}`" if filter_string else "")
        + f"; differing params: {', '.join(param_columns) or 'none'}; std is the sample std over seeds"
        + "; NaN and inf values are counted beside the mean of the finite ones."
        + (f" {skipped_text(skipped)} (--include_foreign compares them)." if skipped else "")
    )
    markdown = "\n\n".join(
        [
            f"# {title}",
            summary,
            "## Runs",
            markdown_table(header, rows),
            "## Cross-domain table",
            markdown_table(domain_header, domain_body),
            *[f"![{os.path.basename(p)}]({os.path.basename(p)})" for p in charts],
        ]
    )
    with open(os.path.join(output_dir, "comparison.md"), "w", encoding="utf-8") as f:
        f.write(markdown + "\n")
    page = html_page(
        title,
        [
            ("Summary", f"<p>{html.escape(summary)}</p>"),
            ("Runs", html_table(header, rows)),
            ("Cross-domain table", html_table(domain_header, domain_body)),
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
