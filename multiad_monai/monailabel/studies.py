"""Which datastore studies a person has reviewed, and the dataset folder a retrain request trains on.

A study is **normal** when its image info says ``"normal": true`` (``PUT /datastore/image/info``), or when it
has a ``final`` label with no voxel above 0 (an empty segmentation submitted from the viewer). It is
**annotated anomalous** when its ``final`` label marks some voxels (and no ``"normal": true`` flag says
otherwise); ``"normal": false`` keeps a study out of training without a label.

:func:`build_dataset` writes the studies in the layout the bundles read (``multiad_monai.data.layouts``):
the normal studies are the training split; annotated anomalous studies, with their labels as masks, are
the test split. The layouts require a test split, so without annotated studies one normal study is also
put there (with an empty mask): training works and the test metrics are undefined (NaN), as the bundle warns.
"""

from __future__ import annotations

import logging
import os
import shutil
from dataclasses import dataclass, field

import nibabel as nib
import numpy as np
import SimpleITK as sitk
from monai.transforms import LoadImage
from monailabel.interfaces.datastore import Datastore, DefaultLabelTag

from multiad_monai.data.datasets import calibration_split, no_samples_left
from multiad_monai.data.layouts import IMAGE_EXTENSIONS, VOLUME_EXTENSIONS
from multiad_monai.transforms.array import VolumeToSlices, load_volume_for_slicing
from multiad_monai.transforms.dicom import register_dicom_reader

__all__ = [
    "Review",
    "Selection",
    "TooFewStudies",
    "review",
    "select",
    "check_split",
    "build_dataset",
    "MIN_NORMAL",
    "NORMAL_FLAG",
]

logger = logging.getLogger(__name__)

NORMAL_FLAG = "normal"
MIN_NORMAL = 3  # calibration holds out two normal studies, training needs at least one more


def _flag(value) -> bool | None:
    if value is None:
        return None
    if isinstance(value, str):
        return value.strip().lower() in ("true", "1", "yes")
    return bool(value)


def _has_anomaly(label_path: str) -> bool:
    reader = "PILReader" if label_path.lower().endswith(IMAGE_EXTENSIONS) else None
    return bool(np.asarray(LoadImage(reader=reader, image_only=True)(label_path)).max() > 0)


@dataclass
class Review:
    """The reviewed studies of a datastore: ``{image id: image path}`` and ``{image id: label path}``."""

    normal: dict[str, str] = field(default_factory=dict)
    anomalous: dict[str, tuple[str, str]] = field(default_factory=dict)  # id -> (image, label)


def review(datastore: Datastore) -> Review:
    """Sort the datastore's studies into normal and annotated anomalous ones (the others are not reviewed)."""
    result = Review()
    for image_id in datastore.list_images():
        image = datastore.get_image_uri(image_id)
        if not (os.path.isdir(image) or image.lower().endswith(IMAGE_EXTENSIONS + VOLUME_EXTENSIONS)):
            continue  # a DICOM series comes as its folder
        flag = _flag(datastore.get_image_info(image_id).get(NORMAL_FLAG))
        label_id = datastore.get_label_by_image_id(image_id, DefaultLabelTag.FINAL)
        label = datastore.get_label_uri(label_id, DefaultLabelTag.FINAL) if label_id else ""
        try:
            lesion = bool(label) and os.path.isfile(label) and _has_anomaly(label)
        except Exception as e:  # an unreadable label is not a review
            logger.warning(f"ignoring the final label of {image_id} ({label}): {e}")
            continue
        if flag or (flag is None and label and not lesion):
            result.normal[image_id] = image
        elif lesion:
            result.anomalous[image_id] = (image, label)
    return result


def _is_volume(path: str) -> bool:
    return os.path.isdir(path) or path.lower().endswith(VOLUME_EXTENSIONS)  # a folder: a DICOM series


def _extension(path: str) -> str:
    """The file type's extension; none for a DICOM series folder (the volumes layout takes it as it is)."""
    if os.path.isdir(path):
        return ""
    name = path.lower()
    return next(e for e in sorted(IMAGE_EXTENSIONS + VOLUME_EXTENSIONS, key=len, reverse=True) if name.endswith(e))


def _link(source: str, target: str) -> None:
    os.makedirs(os.path.dirname(target), exist_ok=True)
    try:
        os.symlink(os.path.abspath(source), target)
    except OSError:  # no symlinks on this file system
        shutil.copyfile(source, target)


def _write_like(source_label: str, target: str) -> None:
    """Link a label, converting it when its file type differs from the image's (the layouts pair equal names)."""
    if _extension(source_label) == _extension(target):
        _link(source_label, target)
    else:
        os.makedirs(os.path.dirname(target), exist_ok=True)
        sitk.WriteImage(sitk.ReadImage(source_label), target)


def _empty_label_like(image: str, target: str) -> None:
    os.makedirs(os.path.dirname(target), exist_ok=True)
    if os.path.isdir(image):  # a DICOM series: its geometry as the bundles read it
        loader = LoadImage(image_only=True)
        register_dicom_reader(loader)
        volume = loader(image)
        nib.save(nib.Nifti1Image(np.zeros(volume.shape, np.uint8), volume.affine.numpy()), target)
        return
    reference = sitk.ReadImage(image)
    empty = sitk.Image(reference.GetSize(), sitk.sitkUInt8)
    empty.CopyInformation(reference)
    sitk.WriteImage(empty, target)


class TooFewStudies(ValueError):
    """Fewer studies are marked normal than a retraining needs: the datastore, not the request, must change."""


@dataclass
class Selection:
    """The studies one retraining uses: all of one kind (3D volumes or 2D images)."""

    volumes: bool
    normal: dict[str, str]
    anomalous: dict[str, tuple[str, str]]
    left_out: list[str]


def select(reviewed: Review) -> Selection:
    """Keep the kind with more normal studies (volumes on a tie); studies of the other kind are left out.

    Raises:
        TooFewStudies: fewer than :data:`MIN_NORMAL` normal studies of that kind, naming how to mark them.
    """
    volumes = {i: p for i, p in reviewed.normal.items() if _is_volume(p)}
    images = {i: p for i, p in reviewed.normal.items() if not _is_volume(p)}
    use_volumes = len(volumes) >= len(images)
    normal = volumes if use_volumes else images
    if len(normal) < MIN_NORMAL:
        raise TooFewStudies(
            f"retraining needs at least {MIN_NORMAL} studies marked normal, found {len(normal)} "
            f"({len(volumes)} volumes, {len(images)} 2D images): mark a study normal with PUT "
            '/datastore/image/info?image=ID and the form field info={"normal": true}, or submit an empty label for it'
        )
    anomalous = {i: v for i, v in reviewed.anomalous.items() if _is_volume(v[0]) == use_volumes}
    left_out = sorted(set(reviewed.normal) - set(normal)) + sorted(set(reviewed.anomalous) - set(anomalous))
    return Selection(use_volumes, normal, anomalous, left_out)


def check_split(
    selection: Selection, calibration_fraction: float, seed: int, slice_range: list[int] | None = None
) -> None:
    """What the training bundle would reject, checked before a task starts with the bundle's own rules.

    The normal studies are split into training and calibration studies as the bundle splits them
    (:func:`~multiad_monai.data.datasets.calibration_split`, on the study files in the order the layout lists
    them); with ``slice_range``, each volume's slices are counted as the bundle cuts them (``VolumeToSlices``).
    Slices dropped by ``min_foreground`` are only known once the volumes are intensity-scaled: the bundle
    checks that itself.

    Raises:
        ValueError: nothing would be left to train or calibrate, naming the studies and the fix.
    """
    where = f"the datastore ({len(selection.normal)} studies marked normal)"
    held_out = calibration_split(len(selection.normal), calibration_fraction, seed, where, selection.volumes)
    if not selection.volumes or slice_range is None:
        return
    slicer = VolumeToSlices(slice_range=slice_range)
    names = sorted(selection.normal, key=lambda i: i + _extension(selection.normal[i]))  # the layout's order
    kept = {}
    for image_id in names:
        volume = load_volume_for_slicing(selection.normal[image_id])
        kept[image_id] = len(slicer.indices(volume.shape[slicer.axis + 1]))
    for split, ids in (
        ("train", [i for n, i in enumerate(names) if n not in held_out]),
        ("calibration", [i for n, i in enumerate(names) if n in held_out]),
    ):
        if not sum(kept[i] for i in ids):
            depths = ", ".join(f"{i}: {kept[i]} slices kept" for i in ids)
            raise ValueError(f"{no_samples_left(split, where)}; slice_range={list(slice_range)} ({depths})")


def build_dataset(reviewed: Review, out_dir: str) -> dict:
    """Write the studies :func:`select` keeps as a ``volumes`` (3D) or MVTec (2D) layout folder (links).

    Returns:
        ``{"layout", "normal", "anomalous", "left_out"}`` with study ids, for the run record.

    Raises:
        ValueError: too few normal studies (see :func:`select`).
    """
    selection = select(reviewed)
    use_volumes, normal, anomalous = selection.volumes, selection.normal, selection.anomalous
    if use_volumes:
        for image_id, path in normal.items():
            _link(path, os.path.join(out_dir, "imagesTr", image_id + _extension(path)))
        tests = {i: image for i, (image, _) in anomalous.items()} or dict([next(iter(normal.items()))])
        for image_id, path in tests.items():
            name = image_id + _extension(path)
            _link(path, os.path.join(out_dir, "imagesTs", name))
            label_name = name if _extension(path) else name + ".nii.gz"  # a series folder's label is a NIfTI file
            if image_id in anomalous:
                _write_like(anomalous[image_id][1], os.path.join(out_dir, "labelsTs", label_name))
            else:
                _empty_label_like(path, os.path.join(out_dir, "labelsTs", label_name))
    else:
        for image_id, path in normal.items():
            _link(path, os.path.join(out_dir, "train", "good", image_id + _extension(path)))
        for image_id, (path, label) in anomalous.items():
            _link(path, os.path.join(out_dir, "test", "anomaly", image_id + _extension(path)))
            _link(label, os.path.join(out_dir, "ground_truth", "anomaly", f"{image_id}_mask{_extension(label)}"))
        if not anomalous:
            image_id, path = next(iter(normal.items()))
            _link(path, os.path.join(out_dir, "test", "good", image_id + _extension(path)))
    if not anomalous:
        logger.warning("no study has a lesion label: the test split holds one normal study, test metrics are NaN")
    return {
        "layout": "volumes" if use_volumes else "mvtec",
        "normal": sorted(normal),
        "anomalous": sorted(anomalous),
        "left_out": selection.left_out,
    }
