"""Compare MLflow runs of the bundles: configurations side by side, seeds as mean ± std, the cross-domain table.

    python -m multiad_monai.compare --tracking_uri sqlite:///runs/cross_domain/mlruns.db --all --output_dir runs/cmp

Runs that differ only in ``seed`` (and in paths such as ``output_dir``, ``ckpt_path`` or ``dataset_dir``, the
dataset being identified by the ``dataset`` / ``dataset_fingerprint`` tags of
:class:`multiad_monai.handlers.RunTracker`) form one group, shown as mean ± sample std over its ``n`` runs;
NaN and inf values are counted beside the mean of the finite ones. Only the params that differ between the
compared runs are shown. The cross-domain table has one row per dataset (or category) and, per configuration,
image AUROC, pixel AUROC and AUPRO, with one mean row per domain (medical, industrial). Everything is written to
``--output_dir`` as Markdown, CSV, one self-contained HTML page and PNG charts, and logged as the artifacts of a
``comparison`` run in the same store.

Modules: :mod:`~multiad_monai.compare.runs` (reading the store), :mod:`~multiad_monai.compare.tables` (groups,
statistics, tables, CSV), :mod:`~multiad_monai.compare.render` (charts, HTML), :mod:`~multiad_monai.compare.report`
(:func:`compare`), :mod:`~multiad_monai.compare.cli` (``main``).
"""

from multiad_monai.compare.cli import main
from multiad_monai.compare.report import METRICS, Comparison, compare
from multiad_monai.compare.runs import RunRecord, load_runs
from multiad_monai.compare.tables import Group, cross_domain_rows, differing_params, group_runs

__all__ = [
    "RunRecord",
    "Group",
    "Comparison",
    "METRICS",
    "load_runs",
    "compare",
    "cross_domain_rows",
    "differing_params",
    "group_runs",
    "main",
]
