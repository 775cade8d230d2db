"""Reading the runs of an MLflow store (this project's only, unless asked), and logging a comparison run to it."""

from __future__ import annotations

import math
import os
import sys
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import mlflow
from mlflow.entities import ViewType
from mlflow.utils import get_results_from_paginated_fn
from monai.utils import path_to_uri

__all__ = ["RunRecord", "load_runs", "split_foreign", "skipped_text", "log_comparison", "PROJECT_TAG"]

COMPARISON_RUN_TYPE = "comparison"
# every run written by this project's bundles carries it (multiad_monai.handlers.RunTracker)
PROJECT_TAG = "multiad_monai_version"
_PAGE = 1000  # runs per request to the store


def _metric(value: float) -> float:
    """MLflow stores +-Inf as +-the largest float: read it back as Inf."""
    return math.copysign(math.inf, value) if abs(value) >= sys.float_info.max else value


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

    @classmethod
    def from_run(cls, run: mlflow.entities.Run, experiment: str) -> RunRecord:
        return cls(
            run_id=run.info.run_id,
            experiment=experiment,
            name=run.info.run_name or run.info.run_id[:8],
            status=run.info.status,
            params=dict(run.data.params),
            tags={k: v for k, v in run.data.tags.items() if not k.startswith("mlflow.")},
            metrics={k: _metric(v) for k, v in run.data.metrics.items()},
            start_time=run.info.start_time or 0,
            end_time=run.info.end_time,
        )


def load_runs(
    client: mlflow.MlflowClient,
    experiments: Sequence[str] | None = None,
    filter_string: str = "",
    include_unfinished: bool = False,
    comparison_experiment: str = "comparison",
) -> list[RunRecord]:
    """Runs of the named experiments (all but the comparison experiment when None), oldest first; earlier
    comparison runs are left out.

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

    def page(max_results: int, page_token: str | None):
        return client.search_runs(
            list(names), filter_string=filter_string, run_view_type=ViewType.ACTIVE_ONLY, max_results=max_results,
            order_by=["attributes.start_time ASC"], page_token=page_token,
        )  # fmt: skip

    return [
        RunRecord.from_run(run, names[run.info.experiment_id])
        for run in get_results_from_paginated_fn(page, _PAGE)
        if run.data.tags.get("run_type") != COMPARISON_RUN_TYPE
        and (include_unfinished or run.info.status == "FINISHED")
    ]


def split_foreign(runs: Sequence[RunRecord]) -> tuple[list[RunRecord], list[RunRecord]]:
    """``(ours, foreign)``: runs with and without this project's ``multiad_monai_version`` tag."""
    return [r for r in runs if PROJECT_TAG in r.tags], [r for r in runs if PROJECT_TAG not in r.tags]


def skipped_text(skipped: Sequence[RunRecord], n: int = 10) -> str:
    names = ", ".join(f"{r.name} ({r.experiment})" for r in skipped[:n]) + (", ..." if len(skipped) > n else "")
    return f"skipped {len(skipped)} run{'s' * (len(skipped) != 1)} not written by multiad-monai: {names}"


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
