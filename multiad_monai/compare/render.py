"""Charts (PNG) and the self-contained HTML page of a comparison."""

from __future__ import annotations

import base64
import html
import math
import os
from collections.abc import Sequence

import mlflow
import numpy as np

from multiad_monai.compare.runs import RunRecord
from multiad_monai.compare.tables import PAPER_METRICS, run_label
from multiad_monai.visualize import new_figure, save_png

__all__ = ["metric_charts", "loss_chart", "html_table", "html_page", "LOSS_METRIC"]

LOSS_METRIC = "loss"


def metric_charts(configs: Sequence[str], rows: Sequence[dict], output_dir: str) -> list[str]:
    """One grouped bar chart per paper metric: datasets (and domain means) on x, a bar per configuration."""
    paths = []
    for metric, title in PAPER_METRICS.items():
        shown = [r for r in rows if any(r["values"][c][metric] for c in configs)]
        if not shown:
            continue
        figure = new_figure(figsize=(max(5.0, 0.55 * len(shown) * max(1, len(configs)) + 2), 4))
        ax = figure.add_subplot()
        width = 0.8 / max(1, len(configs))
        x = np.arange(len(shown))
        for i, config in enumerate(configs):
            stats = [r["values"][config][metric] for r in shown]
            means = [s[0] if s else np.nan for s in stats]
            errors = [s[1] if s and s[1] is not None else 0.0 for s in stats]
            ax.bar(x + (i - (len(configs) - 1) / 2) * width, means, width, yerr=errors, capsize=2, label=config)
        ax.set_xticks(x, [r["dataset"] for r in shown], rotation=45, ha="right", fontsize=8)
        ax.set(ylabel=title, ylim=(0, 1.05), title=f"{title} per dataset (mean ± std over seeds)")
        ax.axhline(0.5, color="grey", linewidth=0.6, linestyle="--")
        if len(configs) > 1:
            ax.legend(fontsize=7, loc="lower left")
        paths.append(save_png(figure, os.path.join(output_dir, f"chart_{metric}.png")))
    return paths


def loss_chart(
    client: mlflow.MlflowClient, runs: Sequence[RunRecord], config_keys: Sequence[str], output_dir: str
) -> str | None:
    """Per-iteration training loss of every training run, one panel per dataset, one colour per configuration."""
    training = [r for r in runs if r.run_type == "training" and LOSS_METRIC in r.metrics]
    if not training:
        return None
    datasets = sorted({r.dataset for r in training})
    labels = list(dict.fromkeys(run_label(r, config_keys) for r in training))
    colours = {label: f"C{i % 10}" for i, label in enumerate(labels)}
    columns = min(4, len(datasets))
    rows = math.ceil(len(datasets) / columns)
    figure = new_figure(figsize=(4 * columns, 3 * rows + 0.4), layout="constrained")
    axes = figure.subplots(rows, columns, squeeze=False)
    for ax in axes.flat[len(datasets) :]:
        ax.axis("off")
    seen: set[str] = set()
    for ax, dataset in zip(axes.flat, datasets):
        for run in (r for r in training if r.dataset == dataset):
            history = sorted(client.get_metric_history(run.run_id, LOSS_METRIC), key=lambda m: m.step)
            label = run_label(run, config_keys)
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
    return save_png(figure, os.path.join(output_dir, "training_loss.png"))


def html_table(header: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    """An HTML table of Markdown cells (``**bold**`` kept bold, everything else escaped)."""

    def cell(text: str, tag: str) -> str:
        text = str(text)
        bold = text.startswith("**") and text.endswith("**")
        inner = html.escape(text.strip("*") if bold else text)
        return f"<{tag}>{'<b>' + inner + '</b>' if bold else inner}</{tag}>"

    head = "".join(cell(h, "th") for h in header)
    body = "".join("<tr>" + "".join(cell(c, "td") for c in row) + "</tr>" for row in rows)
    return f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


def html_page(title: str, sections: Sequence[tuple[str, str]], images: Sequence[str]) -> str:
    """One self-contained page: the sections, then the PNG files embedded as base64."""
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
