"""Compare MLflow runs of the bundles: configurations side by side, seeds as mean ± std, the cross-domain table.

    python -m multiad_monai.compare --tracking_uri sqlite:///runs/cross_domain/mlruns.db --all --output_dir runs/cmp
    python -m multiad_monai.compare --tracking_uri sqlite:///runs/x/mlruns.db multiad_brain multiad_mvtec \\
        --filter "params.image_size = '256'" --group_by teacher
"""

from __future__ import annotations

import argparse
import os
import time
from collections.abc import Sequence

import mlflow

from multiad_monai.compare.report import Comparison, compare

__all__ = ["main"]


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
