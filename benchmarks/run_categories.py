"""Train + evaluate a bundle on every category of an MVTec-layout root, one process per category, and
tabulate metrics, wall time and peak memory.

    python benchmarks/run_categories.py --config_file bundles/mvtec/train.json \\
        --dataset_dir ../shared/data/piped_paper --category all --output_dir runs/piped -- --image_size 128

Arguments after ``--`` are passed to ``python -m monai.bundle run training`` for every category.
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import resource
import subprocess
import sys
import time

from multiad_monai.data import categories

METRICS = ("image_auroc", "pixel_auroc", "pixel_aupro", "image_f1_max")


def run_category(config_file: str, dataset_dir: str, category: str, output_dir: str, extra: list[str]) -> dict:
    """Run one category in a child process; returns its metrics plus wall seconds and peak RSS (MB)."""
    out = os.path.join(output_dir, category or "dataset")
    command = [
        sys.executable,
        "-m",
        "monai.bundle",
        "run",
        "training",
        "--config_file",
        config_file,
        "--dataset_dir",
        dataset_dir,
        "--output_dir",
        out,
        "--ckpt_path",
        os.path.join(out, "model.pt"),
        *extra,
    ]
    if category:
        command += ["--category", category]
    os.makedirs(out, exist_ok=True)
    start = time.perf_counter()
    with open(os.path.join(out, "run.log"), "w", encoding="utf-8") as log:
        # a fresh process per category: getrusage(RUSAGE_CHILDREN) then reports the largest child's peak RSS
        code = subprocess.call(command, stdout=log, stderr=subprocess.STDOUT)
    wall = time.perf_counter() - start
    if code != 0:
        raise RuntimeError(f"category {category!r} failed (exit {code}); see {os.path.join(out, 'run.log')}")
    with open(os.path.join(out, "metrics.json"), encoding="utf-8") as f:
        metrics = json.load(f)
    peak_mb = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024
    return {
        "category": category or os.path.basename(dataset_dir),
        **metrics,
        "wall_seconds": round(wall, 1),
        "peak_rss_mb_so_far": round(peak_mb),
    }


def main(argv: list[str] | None = None) -> None:
    argv = sys.argv[1:] if argv is None else argv
    extra = argv[argv.index("--") + 1 :] if "--" in argv else []
    own = argv[: argv.index("--")] if "--" in argv else argv
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config_file", required=True)
    parser.add_argument("--dataset_dir", required=True)
    parser.add_argument("--category", default="all", help="a name, comma-separated names, 'all', or '' for the root")
    parser.add_argument("--output_dir", required=True)
    args = parser.parse_args(own)
    names = categories(args.dataset_dir, args.category.split(",") if "," in args.category else args.category)
    rows = [run_category(args.config_file, args.dataset_dir, c, args.output_dir, extra) for c in names]
    columns = ["category", *METRICS, "train_seconds", "wall_seconds", "peak_rss_mb_so_far", "n_train", "n_test"]
    with open(os.path.join(args.output_dir, "summary.csv"), "w", newline="", encoding="utf-8") as f:
        writer = csv.DictWriter(f, fieldnames=columns, extrasaction="ignore")
        writer.writeheader()
        writer.writerows(rows)
    print("| " + " | ".join(columns) + " |")
    print("|" + "---|" * len(columns))
    for row in rows:
        cells = [
            f"{row[c]:.3f}" if isinstance(row.get(c), float) and c in METRICS else str(row.get(c, "-")) for c in columns
        ]
        print("| " + " | ".join(cells) + " |")
    if len(rows) > 1:
        means = {m: sum(r[m] for r in rows if m in r) / max(1, sum(m in r for r in rows)) for m in METRICS}
        print("| mean | " + " | ".join(f"{means[m]:.3f}" for m in METRICS) + " |" + " |" * (len(columns) - 5))


if __name__ == "__main__":
    main()
