"""Index a dataset folder into ``{split: [{image, label, mask?}, ...]}``, detecting its on-disk layout.

Layouts:

- ``volumes``: ``imagesTr/*.nii.gz`` (+ optional ``labelsTr/`` with the same file names), ``imagesTs/`` +
  ``labelsTs/``. Lesion labels > 0; slices are cut later, training keeps lesion-free slices only. An image may
  also be a DICOM series: a sub-folder ``imagesTr/<case>/`` or a multi-frame ``<case>.dcm``, its label
  ``labels*/<case>.nii.gz`` (or another volume format; ``data_prep.dicom`` converts DICOM SEG labels).
- ``bmad``: ``train/good[/img]``, ``{valid,test}/{good,Ungood}[/img]``, masks in ``anomaly_mask/`` or ``label/``.
- ``mvtec``: ``train/good``, ``test/<type>``, ``ground_truth/<type>/<stem>_mask.png``.
"""

from __future__ import annotations

import functools
import hashlib
import os
import statistics
from dataclasses import dataclass

from PIL import Image

from multiad_monai.transforms.dicom import is_dicom_file, is_dicom_input
from multiad_monai.utils.errors import check_path

__all__ = [
    "DatasetIndex",
    "aspect_preserving_size",
    "categories",
    "category_root",
    "dataset_fingerprint",
    "default_prior_weight",
    "detect_layout",
    "file_stem",
    "index_dataset",
    "require_dataset_dir",
    "IMAGE_EXTENSIONS",
    "VOLUME_EXTENSIONS",
]

IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".tif", ".tiff", ".bmp")
VOLUME_EXTENSIONS = (".nii", ".nii.gz", ".nrrd", ".mha", ".mhd")


def _files(folder: str, extensions: tuple[str, ...]) -> list[str]:
    if not os.path.isdir(folder):
        return []
    return sorted(
        os.path.join(folder, f) for f in os.listdir(folder) if f.lower().endswith(extensions) and not f.startswith(".")
    )


def file_stem(path: str) -> str:
    """File name without its (possibly double, e.g. ``.nii.gz``) image extension."""
    name = os.path.basename(path)
    for ext in sorted(IMAGE_EXTENSIONS + VOLUME_EXTENSIONS, key=len, reverse=True):
        if name.lower().endswith(ext):
            return name[: -len(ext)]
    return os.path.splitext(name)[0]


def detect_layout(root: str) -> str:
    """Return ``"volumes"``, ``"bmad"`` or ``"mvtec"`` for a dataset folder, or raise naming what is missing."""
    if not os.path.isdir(root):
        raise FileNotFoundError(f"dataset_dir {root} does not exist")
    if os.path.isdir(os.path.join(root, "imagesTr")):
        return "volumes"
    if os.path.isdir(os.path.join(root, "train", "good")):
        has_bmad = any(os.path.isdir(os.path.join(root, s, "Ungood")) for s in ("test", "valid"))
        return "bmad" if has_bmad else "mvtec"
    raise ValueError(
        f"cannot tell the layout of {root}: expected imagesTr/ (3D volumes), or train/good/ with test/<type>/ "
        "(MVTec) or {valid,test}/{good,Ungood}/ (BMAD)"
    )


def category_root(dataset_dir: str, category: str | None = None) -> str:
    """``dataset_dir/category`` (or ``dataset_dir`` without a category), after :func:`check_path`."""
    check_path(dataset_dir, "dataset_dir")
    return os.path.join(dataset_dir, str(category)) if category not in (None, "") else dataset_dir


def default_prior_weight(dataset_dir: str | DatasetIndex, category: str | None = None) -> float:
    """The teacher prior's weight for a dataset folder: 1, or 0 for 3D volumes.

    The prior compares each location with the mean normal teacher feature at that location, so it needs
    training images that show the same scene location by location (2D slices picked at one level, textures,
    aligned objects). Slices cut at every level of a volume do not: on the embedded demo the prior alone
    scores below chance and the fused map loses to the student's, so volumes get the student's map alone.
    """
    if isinstance(dataset_dir, DatasetIndex):
        return 0.0 if dataset_dir.layout == "volumes" else 1.0
    root = category_root(dataset_dir, category)
    return 0.0 if detect_layout(root) == "volumes" else 1.0


def aspect_preserving_size(
    dataset_dir: str | DatasetIndex, image_size: int | list[int], category: str | None = None, multiple: int = 32
) -> list[int]:
    """Network input ``[H, W]`` whose short side is ``image_size`` and whose aspect is that of the training images.

    Stretching a 500x1250 surface scan to a square shrinks it 4.9x along its long side, which thins a crack
    across it below what the stride-4 features resolve; keeping the aspect shrinks both sides by the short
    side's factor only, at the cost of proportionally more pixels. The long side is rounded to ``multiple``
    (the deepest teacher stride) and the median aspect of the training images is used. An explicit
    ``[H, W]`` and 3D volumes (square slices are resampled anyway) are returned as they are.
    """
    if not isinstance(image_size, (int, float)):
        return [int(v) for v in image_size]
    index = dataset_dir if isinstance(dataset_dir, DatasetIndex) else DatasetIndex.build(dataset_dir, category)
    layout, splits = index.layout, index.splits
    short = int(image_size)
    if layout == "volumes":
        return [short, short]
    aspects = []
    for item in splits["train"]:
        try:
            with Image.open(item["image"]) as image:
                width, height = image.size
        except OSError as error:
            raise ValueError(f"cannot read the size of training image {item['image']}: {error}") from None
        aspects.append(width / height)
    aspect = statistics.median(aspects)
    long = max(short, multiple * round(short * max(aspect, 1 / aspect) / multiple))
    return [short, long] if aspect >= 1 else [long, short]


def _volume_files(folder: str) -> list[str]:
    """Volume files, DICOM series folders and DICOM files of ``folder``, sorted."""
    if not os.path.isdir(folder):
        return []
    entries = [os.path.join(folder, f) for f in sorted(os.listdir(folder)) if not f.startswith(".")]
    return [
        p
        for p in entries
        if (os.path.isfile(p) and (p.lower().endswith(VOLUME_EXTENSIONS) or is_dicom_file(p)))
        or (os.path.isdir(p) and is_dicom_input(p))
    ]


def _volume_label(image: str, labels_dir: str) -> str:
    """The label of a volume: the same file name, or for a DICOM series ``<case>`` any ``<case>.<volume ext>``."""
    same = os.path.join(labels_dir, os.path.basename(image))
    if os.path.isfile(same) or image.lower().endswith(VOLUME_EXTENSIONS):
        return same
    stem = file_stem(image) if os.path.isfile(image) else os.path.basename(image)
    candidates = [os.path.join(labels_dir, stem + ext) for ext in VOLUME_EXTENSIONS]
    return next((c for c in candidates if os.path.isfile(c)), candidates[1])


def _index_volumes(root: str) -> dict[str, list[dict]]:
    splits = {}
    for split, images_dir, labels_dir in (("train", "imagesTr", "labelsTr"), ("test", "imagesTs", "labelsTs")):
        items = []
        for image in _volume_files(os.path.join(root, images_dir)):
            label = _volume_label(image, os.path.join(root, labels_dir))
            item = {"image": image}
            if os.path.isfile(label):
                item["mask"] = label
            elif split == "test":
                raise FileNotFoundError(f"test volume {image} has no segmentation {label}")
            items.append(item)
        splits[split] = items
    return splits


def _image_dir(folder: str) -> str:
    """BMAD keeps images either directly in the class folder or in its ``img/`` subfolder."""
    return os.path.join(folder, "img") if os.path.isdir(os.path.join(folder, "img")) else folder


def _index_bmad(root: str) -> dict[str, list[dict]]:
    splits = {
        "train": [
            {"image": p, "label": 0} for p in _files(_image_dir(os.path.join(root, "train", "good")), IMAGE_EXTENSIONS)
        ]
    }
    for split in ("valid", "test"):
        items = []
        for cls, label in (("good", 0), ("Ungood", 1)):
            folder = os.path.join(root, split, cls)
            mask_dir = next(
                (os.path.join(folder, m) for m in ("anomaly_mask", "label") if os.path.isdir(os.path.join(folder, m))),
                None,
            )
            for image in _files(_image_dir(folder), IMAGE_EXTENSIONS):
                item = {"image": image, "label": label}
                if mask_dir:
                    matches = [
                        p
                        for p in _files(mask_dir, IMAGE_EXTENSIONS)
                        if file_stem(p) in (file_stem(image), file_stem(image) + "_mask")
                    ]
                    if not matches:
                        raise FileNotFoundError(f"{image} has no mask in {mask_dir}")
                    item["mask"] = matches[0]
                items.append(item)
        if items:
            splits[split] = items
    return splits


def _index_mvtec(root: str) -> dict[str, list[dict]]:
    splits = {
        "train": [{"image": p, "label": 0} for p in _files(os.path.join(root, "train", "good"), IMAGE_EXTENSIONS)]
    }
    test_dir, gt_dir = os.path.join(root, "test"), os.path.join(root, "ground_truth")
    has_masks = os.path.isdir(gt_dir)
    items = []
    for defect in sorted(os.listdir(test_dir)) if os.path.isdir(test_dir) else []:
        if not os.path.isdir(os.path.join(test_dir, defect)):
            continue
        for image in _files(os.path.join(test_dir, defect), IMAGE_EXTENSIONS):
            item = {"image": image, "label": int(defect != "good")}
            if has_masks and defect != "good":
                candidates = [
                    os.path.join(gt_dir, defect, file_stem(image) + "_mask" + ext) for ext in IMAGE_EXTENSIONS
                ]
                mask = next((c for c in candidates if os.path.isfile(c)), None)
                if mask is None:
                    raise FileNotFoundError(f"anomalous test image {image} has no ground truth {candidates[0]}")
                item["mask"] = mask
            items.append(item)
    splits["test"] = items
    return splits


def index_dataset(root: str) -> tuple[str, dict[str, list[dict]]]:
    """Detect the layout of ``root`` and list its samples per split.

    Returns:
        ``(layout, {"train": [...], "test": [...], "valid": [...]?})``; items are ``{"image": path,
        "label": 0/1, "mask": path?}`` (for volumes, labels come from the segmentation later).

    Raises:
        FileNotFoundError: naming the folder or file when the layout is broken.
        ValueError: naming the folder when a split is empty.
    """
    layout = detect_layout(root)
    splits = {"volumes": _index_volumes, "bmad": _index_bmad, "mvtec": _index_mvtec}[layout](root)
    train_dir = {"volumes": "imagesTr", "bmad": "train/good", "mvtec": "train/good"}[layout]
    if not splits.get("train"):
        raise ValueError(f"no training images found in {os.path.join(root, train_dir)}")
    if not splits.get("test"):
        raise ValueError(f"no test images found in {root} ({layout} layout)")
    return layout, splits


def dataset_fingerprint(root: str) -> tuple[str, int]:
    """Hash of the sorted relative file paths and sizes under ``root``: equal for copies of the same data.

    Returns:
        ``(first 16 hex digits of the SHA-256, number of files)``.
    """
    if not os.path.isdir(root):
        raise FileNotFoundError(f"dataset folder not found: {root}")
    entries = []
    for folder, dirs, files in os.walk(root):
        dirs.sort()
        for name in files:
            path = os.path.join(folder, name)
            entries.append(f"{os.path.relpath(path, root).replace(os.sep, '/')}\t{os.path.getsize(path)}\n")
    digest = hashlib.sha256("".join(sorted(entries)).encode()).hexdigest()
    return digest[:16], len(entries)


@dataclass(frozen=True)
class DatasetIndex:
    """A dataset folder indexed once per run, shared by everything that reads its listing.

    The training bundle builds one (``dataset_index``) and hands it to :func:`default_prior_weight`,
    :func:`aspect_preserving_size`, :func:`~multiad_monai.data.load_datasets` and the MLflow tags
    (:class:`~multiad_monai.handlers.RunTracker`), instead of each walking the folder again.

    Args:
        dataset_dir: the dataset root given by the user.
        category: sub-folder of ``dataset_dir`` (an MVTec AD category), or None.
        root: ``dataset_dir/category``.
        layout: ``"volumes"``, ``"bmad"`` or ``"mvtec"``.
        splits: ``{split: [{image, label, mask?}, ...]}`` as :func:`index_dataset` returns it.
    """

    dataset_dir: str
    category: str | None
    root: str
    layout: str
    splits: dict[str, list[dict]]

    @classmethod
    def build(cls, dataset_dir: str, category: str | None = None) -> DatasetIndex:
        """Index ``dataset_dir`` (``/category``), raising as :func:`index_dataset` does."""
        root = category_root(dataset_dir, category)
        layout, splits = index_dataset(root)
        return cls(dataset_dir, category if category not in (None, "") else None, root, layout, splits)

    @functools.cached_property
    def fingerprint(self) -> tuple[str, int]:
        """:func:`dataset_fingerprint` of :attr:`root`, computed on first use."""
        return dataset_fingerprint(self.root)


def require_dataset_dir(bundle: str, docs: str) -> str:
    """For bundles without an embedded demo: fail fast, saying how to get data."""
    raise ValueError(
        f"the {bundle} bundle has no embedded demo data: prepare a dataset as described in {docs} "
        "(data_prep/ converts the public raw datasets) and pass --dataset_dir DIR"
    )


def categories(root: str, category: str | list[str] | None) -> list[str]:
    """MVTec-style category names under ``root``: one name, a list, or ``"all"`` (every folder with train/good)."""
    if category in (None, ""):
        return [""]
    if category == "all":
        found = sorted(c for c in os.listdir(root) if os.path.isdir(os.path.join(root, c, "train", "good")))
        if not found:
            raise ValueError(f"no category folders with train/good/ under {root}")
        return found
    names = [category] if isinstance(category, str) else list(category)
    missing = [c for c in names if not os.path.isdir(os.path.join(root, c))]
    if missing:
        raise FileNotFoundError(f"categories {missing} not found under {root}")
    return names
