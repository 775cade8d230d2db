"""Check a prepared dataset folder before training on it.

The layout is detected and indexed with :func:`multiad_monai.data.index_dataset` (the loader's own indexer), then
every image is opened with PIL and every mask is checked: present for each anomalous valid/test image when the
dataset has masks, readable, single-channel, of its image's size, binary (0/1 or 0/255), empty for normal images
and not empty for anomalous ones. A ``volumes`` layout (NIfTI or DICOM series) has each volume read as training
reads it and each label checked: readable, on its volume's voxels (same shape and affine), non-negative integers,
and at least one test volume with a lesion. A summary table (split, class, images, masks, problems) is printed,
followed by each problem with its file.

Usage::

    python -m data_prep.validate data/brats      # exit status 0 when clean, 1 when any problem is found
"""

from __future__ import annotations

import argparse
import os
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np
from monai.transforms import LoadImage
from PIL import Image

from multiad_monai.data.layouts import index_dataset
from multiad_monai.transforms import decode_palette
from multiad_monai.transforms.dicom import register_dicom_reader

__all__ = ["Problem", "ClassSummary", "ValidationReport", "validate_folder", "main"]


@dataclass
class Problem:
    """One problem found: the file (or folder) and what is wrong with it."""

    path: str
    message: str
    split: str = ""
    cls: str = ""


@dataclass
class ClassSummary:
    """Counts of one ``split``/``cls`` folder."""

    split: str
    cls: str
    images: int = 0
    masks: int = 0
    problems: int = 0


@dataclass
class ValidationReport:
    """What :func:`validate_folder` found.

    Attributes:
        root: the checked folder.
        layout: ``"bmad"``, ``"mvtec"`` or ``"volumes"``; ``None`` when it could not be indexed.
        classes: counts per split and class, in split order.
        problems: every problem, with its file.
    """

    root: str
    layout: str | None = None
    classes: list[ClassSummary] = field(default_factory=list)
    problems: list[Problem] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        """``True`` when no problem was found."""
        return not self.problems

    def format(self) -> str:
        """The summary table followed by the list of problems."""
        header = ("split", "class", "images", "masks", "problems")
        rows = [header] + [(c.split, c.cls, str(c.images), str(c.masks), str(c.problems)) for c in self.classes]
        widths = [max(len(row[i]) for row in rows) for i in range(len(header))]
        lines = [f"{self.root} ({self.layout or 'unknown'} layout)"]
        for row in rows:
            lines.append("  ".join(c.ljust(w) if i < 2 else c.rjust(w) for i, (c, w) in enumerate(zip(row, widths))))
        if self.ok:
            lines.append("OK: no problem found")
        else:
            lines.append(f"{len(self.problems)} problem(s):")
            lines += [f"  {p.path}: {p.message}" for p in self.problems]
        return "\n".join(lines)


def _open(path: str) -> tuple[np.ndarray | None, str | None]:
    """Fully decode an image; return ``(array, None)`` or ``(None, error)``."""
    try:
        with Image.open(path) as image:
            image.load()
            return np.asarray(decode_palette(image)), None  # palette PNGs as the package reads them
    except Exception as e:
        return None, f"unreadable ({type(e).__name__}: {e})"


def _class_name(layout: str, split: str, item: dict) -> str:
    if split == "train" or layout == "bmad":
        return "Ungood" if item.get("label") else "good"
    return os.path.basename(os.path.dirname(item["image"]))  # mvtec: the defect type folder


def _check_mask(mask_path: str, image: np.ndarray | None, anomalous: bool) -> list[str]:
    """Problems of one mask (empty list when fine)."""
    mask, error = _open(mask_path)
    if mask is None:
        return [f"mask {error}"]
    problems = []
    if mask.ndim != 2:
        problems.append(f"mask has shape {mask.shape}: expected a single-channel mask")
        mask = mask.max(axis=-1)
    if image is not None and mask.shape != image.shape[:2]:
        problems.append(f"mask size {mask.shape} differs from its image's {image.shape[:2]}")
    values = set(np.unique(mask).tolist())
    if not (values <= {0, 255} or values <= {0, 1}):
        shown = sorted(values)[:6]
        problems.append(f"mask is not binary: values {shown}{'...' if len(values) > 6 else ''}")
    elif anomalous and values == {0}:
        problems.append("mask of an anomalous image is empty")
    elif not anomalous and values != {0}:
        problems.append("mask of a normal image is not empty")
    return problems


def _load_volume(path: str):
    loader = LoadImage(image_only=True, ensure_channel_first=True)
    register_dicom_reader(loader)  # a series folder reads as everywhere else, its problems named the same way
    return loader(path)


def _check_volume(item: dict, split: str) -> list[tuple[str, str]]:
    """Problems of one volume and its label: readable, one channel 3D, the label in its geometry, integer labels."""
    try:
        image = _load_volume(item["image"])
    except Exception as e:
        return [(item["image"], f"unreadable ({type(e).__name__}: {e})")]
    if image.ndim != 4 or image.shape[0] != 1:
        return [(item["image"], f"not a one-channel 3D volume (shape {tuple(image.shape)} once channel-first)")]
    if "mask" not in item:
        return []
    try:
        label = _load_volume(item["mask"])
    except Exception as e:
        return [(item["mask"], f"label unreadable ({type(e).__name__}: {e})")]
    problems = []
    if tuple(label.shape[1:]) != tuple(image.shape[1:]):
        problems.append(f"label shape {tuple(label.shape[1:])} differs from its volume's {tuple(image.shape[1:])}")
    elif not np.allclose(label.affine.numpy(), image.affine.numpy(), atol=1e-3):
        problems.append("label geometry (affine) differs from its volume's: it does not lie on the same voxels")
    values = np.unique(label.numpy())
    if values.min() < 0 or not np.all(values == np.round(values)):
        problems.append(f"label values are not non-negative integers: {values[:6].tolist()}")
    return [(item["mask"], message) for message in problems]


def _validate_volumes(report: ValidationReport, splits: dict[str, list[dict]]) -> ValidationReport:
    """Volumes layout: every volume and label checked; the test split needs a volume with a lesion."""
    lesion_in_test = False
    for split in ("train", "test"):
        summary = ClassSummary(split, "volumes")
        for item in splits.get(split, []):
            summary.images += 1
            summary.masks += "mask" in item
            problems = _check_volume(item, split)
            if split == "test" and "mask" in item and not problems:
                lesion_in_test = lesion_in_test or bool(_load_volume(item["mask"]).max() > 0)
            summary.problems += len(problems)
            report.problems += [Problem(p, message, split, "volumes") for p, message in problems]
        report.classes.append(summary)
    if not lesion_in_test:
        report.problems.append(Problem(os.path.join(report.root, "labelsTs"), "no test volume has a lesion", "test"))
    return report


def validate_folder(path: str) -> ValidationReport:
    """Check a prepared dataset folder (see the module docstring); never raises for bad data.

    Args:
        path: a folder in the BMAD, MVTec or volumes layout.

    Returns:
        A :class:`ValidationReport`; ``report.ok`` is ``False`` when any problem was found.
    """
    report = ValidationReport(root=path)
    try:
        report.layout, splits = index_dataset(path)
    except (OSError, ValueError) as e:
        report.problems.append(Problem(path, f"cannot index: {e}"))
        return report
    if report.layout == "volumes":
        return _validate_volumes(report, splits)
    has_masks = any("mask" in item for split in ("valid", "test") for item in splits.get(split, []))
    summaries: dict[tuple[str, str], ClassSummary] = {}
    for split in ("train", "valid", "test"):
        for item in splits.get(split, []):
            cls = _class_name(report.layout, split, item)
            summary = summaries.setdefault((split, cls), ClassSummary(split, cls))
            summary.images += 1
            image, error = _open(item["image"])
            problems = [(item["image"], error)] if error else []
            anomalous = bool(item.get("label"))
            if "mask" in item:
                summary.masks += 1
                problems += [(item["mask"], message) for message in _check_mask(item["mask"], image, anomalous)]
            elif has_masks and anomalous:
                problems.append((item["image"], "anomalous image has no mask"))
            summary.problems += len(problems)
            report.problems += [Problem(p, message, split, cls) for p, message in problems]
    if not any(item.get("label") for item in splits.get("test", [])):
        report.problems.append(Problem(os.path.join(path, "test"), "no anomalous test image", "test"))
    report.classes = list(summaries.values())
    return report


def main(argv: Sequence[str] | None = None) -> int:
    """Command line: ``python -m data_prep.validate FOLDER``; exit status 1 when any problem is found."""
    parser = argparse.ArgumentParser(prog="data_prep.validate", description=__doc__.split("\n\n")[0])
    parser.add_argument("folder", help="a prepared dataset folder (BMAD or MVTec layout)")
    args = parser.parse_args(argv)
    report = validate_folder(args.folder)
    print(report.format())
    return 0 if report.ok else 1


if __name__ == "__main__":
    raise SystemExit(main())
