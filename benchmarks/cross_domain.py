"""Cross-domain benchmark: bundles x datasets/categories x configurations x seeds into one MLflow store, then compare.

    python benchmarks/cross_domain.py --data_root ../shared/data --output_dir runs/cross_domain \\
        --datasets lgg_dev piped_paper chest_xray --configs multiad adversarial --seeds 0 1 2 \\
        -- --epochs 30 --image_size 128

Each run is ``python -m monai.bundle run training`` of the dataset's bundle in its own process, logging to
``<output_dir>/mlruns.db`` (experiment ``--experiment_name``) with the tags ``config`` and ``benchmark_key`` (a hash
of everything that defines the run). A run whose key already has a FINISHED run in the store is skipped, so an
interrupted benchmark continues where it stopped; leftovers of killed or failed attempts (their MLflow runs and
files) are replaced when the run is repeated. At the end ``multiad_monai.compare`` writes the tables and charts to
``<output_dir>/comparison`` and logs them as a ``comparison`` run.

Datasets are ``NAME`` (a folder of ``--data_root``) or ``NAME=BUNDLE:DOMAIN``; the known ones:
``lgg_dev`` (brain, medical), ``piped_paper`` (mvtec, industrial, every category with defects, masks inverted),
``chest_xray`` (mvtec, medical). Configurations are ``NAME`` (``multiad``: the bundle defaults, ``distill``:
``adversarial_weight 0``, ``adversarial``: the paper's adversarial term, weight 0.1) or ``NAME:KEY=VALUE,KEY=VALUE``
(bundle keys). Arguments after ``--`` go to every run.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import subprocess
import sys
import time
from dataclasses import dataclass, field
from functools import cached_property

import mlflow

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)  # run as a script from a checkout

from multiad_monai.compare import compare  # noqa: E402
from multiad_monai.handlers import dataset_fingerprint  # noqa: E402

DATASETS = {
    "lgg_dev": {"bundle": "brain", "domain": "medical"},
    "piped_paper": {"bundle": "mvtec", "domain": "industrial", "categories": True, "args": ["--invert_masks", "True"]},
    "chest_xray": {"bundle": "mvtec", "domain": "medical"},
}
CONFIGS = {"multiad": [], "distill": ["--adversarial_weight", "0.0"], "adversarial": ["--adversarial_weight", "0.1"]}


@dataclass
class Run:
    """One training of the benchmark."""

    dataset: str
    dataset_dir: str
    category: str
    bundle: str
    domain: str
    config: str
    seed: int
    args: list[str] = field(default_factory=list)

    @property
    def name(self) -> str:
        return "/".join(p for p in (self.dataset, self.category, self.config, f"seed{self.seed}") if p)

    @cached_property
    def key(self) -> str:
        """Hash of what defines the run, the data by its fingerprint (not its path): equal keys, identical runs."""
        data = os.path.join(self.dataset_dir, self.category) if self.category else self.dataset_dir
        spec = [
            self.bundle,
            self.dataset,
            self.category,
            dataset_fingerprint(data)[0],
            self.domain,
            self.seed,
            self.args,
        ]
        return "bk-" + hashlib.sha256(json.dumps(spec).encode()).hexdigest()[:20]

    def command(self, output_dir: str, tracking_uri: str, experiment: str, log_model: bool) -> list[str]:
        out = os.path.join(output_dir, "runs", self.name)
        bundle = os.path.join(ROOT, "bundles", self.bundle)
        command = [
            sys.executable, "-m", "monai.bundle", "run", "training",
            "--config_file", os.path.join(bundle, "train.json"), "--bundle_root", bundle,
            "--dataset_dir", self.dataset_dir, "--output_dir", out, "--ckpt_path", os.path.join(out, "model.pt"),
            "--seed", str(self.seed), "--tracking_uri", tracking_uri, "--experiment_name", experiment,
            "--run_name", self.name, "--log_model", str(log_model),
            "--run_tags", repr({"domain": self.domain, "config": self.config, "benchmark_key": self.key}),
            "--overwrite", "true",  # only unfinished runs are started: their folder holds a killed attempt's files
        ]  # fmt: skip
        if self.category:
            command += ["--category", self.category]
        return command + self.args


def parse_configs(specs: list[str]) -> dict[str, list[str]]:
    """``NAME`` (built in) or ``NAME:KEY=VALUE,...`` -> bundle arguments."""
    configs = {}
    for spec in specs:
        name, _, overrides = spec.partition(":")
        if not overrides:
            if name not in CONFIGS:
                raise ValueError(f"unknown configuration {name!r}: use one of {sorted(CONFIGS)} or NAME:KEY=VALUE,...")
            configs[name] = list(CONFIGS[name])
            continue
        args = []
        for item in overrides.split(","):
            key, eq, value = item.partition("=")
            if not eq or not key:
                raise ValueError(f"bad override {item!r} in configuration {spec!r}: expected KEY=VALUE")
            args += [f"--{key}", value]
        configs[name] = args
    return configs


def with_defects(dataset_dir: str) -> list[str]:
    """MVTec-style categories of ``dataset_dir`` whose test split holds anomalous images."""
    found = []
    for name in sorted(os.listdir(dataset_dir)):
        test = os.path.join(dataset_dir, name, "test")
        if os.path.isdir(os.path.join(dataset_dir, name, "train", "good")) and os.path.isdir(test):
            if any(d != "good" and os.path.isdir(os.path.join(test, d)) for d in os.listdir(test)):
                found.append(name)
    return found


def plan(
    data_root: str, datasets: list[str], categories: list[str] | None, configs: dict[str, list[str]],
    seeds: list[int], extra: list[str],
) -> list[Run]:  # fmt: skip
    """Every run, datasets outermost, seeds innermost."""
    runs = []
    for spec in datasets:
        name, _, rest = spec.partition("=")
        known = DATASETS.get(name, {"bundle": "mvtec", "domain": "industrial"})
        bundle, _, domain = rest.partition(":") if rest else (known["bundle"], "", known["domain"])
        dataset_dir = os.path.join(data_root, name)
        if not os.path.isdir(dataset_dir):
            raise FileNotFoundError(f"dataset {name!r} not found: {dataset_dir} is not a folder")
        names = [""]
        if known.get("categories") or not os.path.isdir(os.path.join(dataset_dir, "train")):
            names = with_defects(dataset_dir)
            if categories:
                missing = [c for c in categories if c not in names and os.path.isdir(os.path.join(dataset_dir, c))]
                names = [c for c in names if c in categories]
                if missing:
                    print(f"skipping categories without defects: {missing}", flush=True)
            if not names:
                raise ValueError(f"no categories with anomalous test images selected under {dataset_dir}")
        for category in names:
            for config, config_args in configs.items():
                for seed in seeds:
                    args = known.get("args", []) + config_args + extra
                    runs.append(Run(name, dataset_dir, category, bundle, domain or known["domain"], config, seed, args))
    return runs


def finished(client: mlflow.MlflowClient, experiment: str, run: Run) -> bool:
    exp = client.get_experiment_by_name(experiment)
    if exp is None:
        return False
    query = f"tags.benchmark_key = '{run.key}' and attributes.status = 'FINISHED'"
    return bool(client.search_runs([exp.experiment_id], query, max_results=1))


def delete_leftovers(client: mlflow.MlflowClient, experiment: str, run: Run) -> None:
    """Delete unfinished runs of the same name: MONAI's MLFlowHandler would otherwise continue them."""
    exp = client.get_experiment_by_name(experiment)
    if exp is None:
        return
    query = f"attributes.run_name = '{run.name}' and attributes.status != 'FINISHED'"
    for leftover in client.search_runs([exp.experiment_id], query):
        client.delete_run(leftover.info.run_id)


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    extra = argv[argv.index("--") + 1 :] if "--" in argv else []
    own = argv[: argv.index("--")] if "--" in argv else argv
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data_root", required=True, help="folder holding the datasets, e.g. ../shared/data")
    parser.add_argument("--datasets", nargs="+", default=list(DATASETS), help="NAME or NAME=BUNDLE:DOMAIN")
    parser.add_argument("--categories", default="", help="comma-separated categories (default: all with defects)")
    parser.add_argument("--configs", nargs="+", default=["multiad", "adversarial"], help="NAME or NAME:KEY=VALUE,...")
    parser.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    parser.add_argument("--output_dir", required=True, help="runs, mlruns.db and comparison/ go here")
    parser.add_argument("--experiment_name", default="cross_domain")
    parser.add_argument("--log_models", action="store_true", help="log every run's model to MLflow (large)")
    parser.add_argument("--dry_run", action="store_true", help="print the plan and the commands only")
    args = parser.parse_args(own)
    try:
        categories = [c for c in args.categories.split(",") if c] or None
        runs = plan(args.data_root, args.datasets, categories, parse_configs(args.configs), args.seeds, extra)
    except (ValueError, FileNotFoundError) as e:
        parser.exit(1, f"error: {e}\n")
    output_dir = os.path.abspath(args.output_dir)
    tracking_uri = f"sqlite:///{os.path.join(output_dir, 'mlruns.db')}"
    print(f"{len(runs)} runs into {tracking_uri} (experiment {args.experiment_name!r})", flush=True)
    if args.dry_run:
        for run in runs:
            print(" ".join(run.command(output_dir, tracking_uri, args.experiment_name, args.log_models)))
        return 0
    os.makedirs(os.path.join(output_dir, "logs"), exist_ok=True)
    client = mlflow.MlflowClient(tracking_uri)
    start, failed, done, skipped = time.perf_counter(), [], 0, 0
    for i, run in enumerate(runs, 1):
        command = run.command(output_dir, tracking_uri, args.experiment_name, args.log_models)
        if finished(client, args.experiment_name, run):
            skipped += 1
            print(f"[{i}/{len(runs)}] {run.name}: finished before, skipped", flush=True)
            continue
        delete_leftovers(client, args.experiment_name, run)
        log_path = os.path.join(output_dir, "logs", run.name.replace("/", "__") + ".log")
        t = time.perf_counter()
        with open(log_path, "w", encoding="utf-8") as log:
            code = subprocess.call(command, cwd=ROOT, stdout=log, stderr=subprocess.STDOUT)
        status = "ok" if code == 0 else f"FAILED (exit {code}, see {log_path})"
        print(f"[{i}/{len(runs)}] {run.name}: {status} in {time.perf_counter() - t:.0f} s", flush=True)
        if code == 0:
            done += 1
        else:
            failed.append(run.name)
    wall = time.perf_counter() - start
    print(f"{done} runs done, {skipped} skipped, {len(failed)} failed in {wall:.0f} s wall", flush=True)
    if done + skipped:
        result = compare(tracking_uri, [args.experiment_name], output_dir=os.path.join(output_dir, "comparison"))
        print(result.markdown.split("\n\n![")[0])
        print(f"\nreports in {os.path.join(output_dir, 'comparison')}; comparison run {result.run_id}")
    if failed:
        print(f"failed runs: {failed}", file=sys.stderr)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
