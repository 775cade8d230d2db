"""Write small synthetic DICOM series with pydicom, as a scanner exports them, with their known geometry."""

from __future__ import annotations

import os
from collections.abc import Sequence

import numpy as np

CT_IMAGE = "1.2.840.10008.5.1.4.1.1.2"
MR_IMAGE = "1.2.840.10008.5.1.4.1.1.4"


def series_affine(
    origin: Sequence[float], orientation: Sequence[float], spacing: Sequence[float], slice_spacing: float
) -> np.ndarray:
    """RAS voxel-to-world affine of a series in MONAI's ITK array order ``(column, row, slice)``."""
    row, column = np.asarray(orientation[:3], float), np.asarray(orientation[3:], float)
    normal = np.cross(row, column)
    lps = np.eye(4)
    lps[:3, 0] = row * spacing[1]
    lps[:3, 1] = column * spacing[0]
    lps[:3, 2] = normal * slice_spacing
    lps[:3, 3] = origin
    return np.diag([-1.0, -1.0, 1.0, 1.0]) @ lps


def write_series(
    folder: str,
    stored: np.ndarray,
    *,
    modality: str = "CT",
    slope: float = 1.0,
    intercept: float = -1024.0,
    origin: Sequence[float] = (-20.0, -30.0, 10.0),
    orientation: Sequence[float] = (1, 0, 0, 0, 1, 0),
    spacing: Sequence[float] = (0.8, 0.7),
    slice_spacing: float = 2.5,
    extension: str = "",
    series_number: int = 3,
    description: str = "AX TEST",
    study_uid: str | None = None,
    frame_of_reference_uid: str | None = None,
    series_uid: str | None = None,
    image_type: Sequence[str] = ("ORIGINAL", "PRIMARY", "AXIAL"),
    skip: Sequence[int] = (),
    names: str = "image_{i}",
    seed: int = 0,
) -> list[str]:
    """Write ``stored`` ``(slices, rows, cols)`` (stored values, int16) as one single-frame series.

    Files are named ``image_0``, ``image_1`` ... in a shuffled order (instance numbers too), as exports do;
    slice ``k`` lies at ``origin + k * slice_spacing * normal``. ``skip`` leaves slices out (a broken export).

    Returns:
        the written files, in slice order.
    """
    import pydicom
    from pydicom.dataset import Dataset, FileMetaDataset
    from pydicom.uid import ExplicitVRLittleEndian, generate_uid

    os.makedirs(folder, exist_ok=True)
    rng = np.random.default_rng(seed)
    study_uid = study_uid or generate_uid(entropy_srcs=[folder, "study"])
    series_uid = series_uid or generate_uid(entropy_srcs=[folder, "series", str(series_number)])
    frame_uid = frame_of_reference_uid or generate_uid(entropy_srcs=[study_uid, "frame"])
    normal = np.cross(np.asarray(orientation[:3], float), np.asarray(orientation[3:], float))
    sop_class = CT_IMAGE if modality == "CT" else MR_IMAGE
    order = rng.permutation(len(stored))
    paths = [""] * len(stored)
    for file_index, k in enumerate(order):
        if k in skip:
            continue
        meta = FileMetaDataset()
        meta.MediaStorageSOPClassUID = sop_class
        meta.MediaStorageSOPInstanceUID = generate_uid(entropy_srcs=[series_uid, str(k)])
        meta.TransferSyntaxUID = ExplicitVRLittleEndian
        ds = Dataset()
        ds.file_meta = meta
        ds.SOPClassUID, ds.SOPInstanceUID = sop_class, meta.MediaStorageSOPInstanceUID
        ds.PatientName, ds.PatientID, ds.PatientBirthDate, ds.PatientSex = "Test^Synthetic", "SYN001", "19700101", "O"
        ds.StudyInstanceUID, ds.SeriesInstanceUID, ds.FrameOfReferenceUID = study_uid, series_uid, frame_uid
        ds.StudyDate, ds.StudyTime, ds.StudyID, ds.AccessionNumber = "20260101", "120000", "1", "A1"
        ds.ReferringPhysicianName, ds.Manufacturer = "", "synthetic"
        ds.SeriesDate, ds.SeriesTime, ds.ContentDate, ds.ContentTime = "20260101", "120000", "20260101", "120000"
        ds.Modality, ds.SeriesNumber, ds.SeriesDescription = modality, series_number, description
        ds.InstanceNumber, ds.ImageType = int(file_index) + 1, list(image_type)
        ds.ImagePositionPatient = [float(v) for v in np.asarray(origin, float) + k * slice_spacing * normal]
        ds.ImageOrientationPatient = [float(v) for v in orientation]
        ds.PixelSpacing, ds.SliceThickness = [float(v) for v in spacing], slice_spacing
        ds.PositionReferenceIndicator = ""
        ds.Rows, ds.Columns = stored.shape[1:]
        ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
        ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 16, 15, 1
        if modality == "CT":
            ds.RescaleSlope, ds.RescaleIntercept, ds.RescaleType = slope, intercept, "HU"
            ds.KVP = 120
        else:
            ds.ScanningSequence, ds.SequenceVariant, ds.ScanOptions, ds.MRAcquisitionType = "SE", "NONE", "", "2D"
            ds.EchoTime, ds.RepetitionTime, ds.EchoTrainLength, ds.MagneticFieldStrength = 100.0, 9000.0, 1, 3.0
        ds.PixelData = np.ascontiguousarray(stored[k], dtype=np.int16).tobytes()
        path = os.path.join(folder, names.format(i=file_index) + extension)
        pydicom.dcmwrite(path, ds, write_like_original=False)
        paths[k] = path
    return [p for p in paths if p]


def ct_volume(shape=(6, 20, 24), seed: int = 0) -> np.ndarray:
    """Stored values ``(slices, rows, cols)``: soft tissue (HU 40) with noise inside air (-1000), plus a bright spot."""
    rng = np.random.default_rng(seed)
    hu = np.full(shape, -1000.0)
    hu[:, 3:-3, 4:-4] = 40 + rng.normal(0, 10, (shape[0], shape[1] - 6, shape[2] - 8))
    hu[shape[0] // 2, 8:12, 10:14] = 300
    return np.round(hu + 1024).astype(np.int16)


def write_dicom_volumes(root: str, n_train: int = 3, n_test: int = 2, shape=(12, 24, 24), seed: int = 4) -> str:
    """The ``volumes`` layout with MR series as images: ``images{Tr,Ts}/case<i>/`` series folders (no extension)
    and NIfTI labels ``labels{Tr,Ts}/case<i>.nii.gz`` in the series' geometry; test series carry a bright cube."""
    import nibabel as nib

    rng = np.random.default_rng(seed)
    origin, orientation, spacing, slice_spacing = (-24.0, -24.0, -12.0), (1, 0, 0, 0, 1, 0), (2.0, 2.0), 2.0
    affine = series_affine(origin, orientation, spacing, slice_spacing)
    for split, n in (("Tr", n_train), ("Ts", n_test)):
        os.makedirs(f"{root}/labels{split}", exist_ok=True)
        for i in range(n):
            x = np.arange(shape[2])
            stripes = 100 + 50 * np.sin(2 * np.pi * x / 8)[None, None, :] + rng.normal(0, 5, shape)
            label = np.zeros(shape, dtype=np.uint8)  # (slices, rows, cols)
            if split == "Ts":
                label[4:7, 6:14, 6:14] = 1
                stripes[label > 0] = 280
            write_series(f"{root}/images{split}/case{i}", np.round(stripes).astype(np.int16), modality="MR",
                         origin=origin, orientation=orientation, spacing=spacing, slice_spacing=slice_spacing,
                         series_number=i + 1, description=f"AX FLAIR {split}{i}", seed=seed + i)  # fmt: skip
            nib.save(nib.Nifti1Image(label.transpose(2, 1, 0), affine), f"{root}/labels{split}/case{i}.nii.gz")
    return root
