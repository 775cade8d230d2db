"""Tiny seeded raw datasets written in their real download layouts, and their conversions (session-scoped).

The volumes are small (32x32 in-plane) but keep the real file names, label values, affines and intensity ranges:
BraTS2021 (1 mm, stored LPS, labels 0/1/2/4, background exactly 0), LiTS (``volume-N.nii`` / ``segmentation-N.nii``,
labels 0/1/2, CT in HU), BTCV (``img/imgXXXX.nii.gz`` / ``label/labelXXXX.nii.gz``, 13 organ labels, liver 6),
OCT2017 (``CLASS-PATIENT-N.jpeg`` grey JPEGs of several sizes) and RESC (BMAD-like PNGs with 0/1 or 0/255 masks).
"""

from __future__ import annotations

import os

import nibabel as nib
import numpy as np
import pytest
from PIL import Image

from data_prep.brats import convert_brats
from data_prep.liver import convert_liver
from data_prep.oct import convert_oct2017, convert_resc

BRATS_SHAPE = (32, 32, 20)
BRATS_SLICE_RANGE = (4, 16)
BRATS_MODALITY_SCALE = {"flair": 300.0, "t1": 500.0, "t1ce": 700.0, "t2": 900.0}
CT_SHAPE = (32, 32, 12)
LIVER_HU, TUMOR_HU, BODY_HU, AIR_HU = 100, 30, 40, -1000
# BTCV organs outside the liver, label: (centre, HU), all visible in the window: spleen, kidneys, stomach, aorta
BTCV_ORGANS = {
    1: ((24, 8, 6), 50),
    2: ((22, 24, 4), 150),
    3: ((8, 26, 4), 150),
    7: ((26, 18, 7), 20),
    8: ((16, 28, 6), 200),
}
OCT_SIZES = ((40, 48), (36, 52))


def save_nifti(path: str, array: np.ndarray, affine: np.ndarray) -> None:
    """Save like the scanners' exports: qform and sform set (scanner space), millimetre units."""
    os.makedirs(os.path.dirname(path), exist_ok=True)
    image = nib.Nifti1Image(array, affine)
    image.header.set_xyzt_units("mm", "sec")
    image.set_qform(affine, code=1)
    image.set_sform(affine, code=1)
    nib.save(image, path)


def _ellipsoid(shape, centre, radii) -> np.ndarray:
    grid = np.meshgrid(*(np.arange(s) for s in shape), indexing="ij")
    return sum(((g - c) / r) ** 2 for g, c, r in zip(grid, centre, radii)) <= 1.0


def brats_affine(shape=BRATS_SHAPE) -> np.ndarray:
    """The BraTS2021 affine: 1 mm voxels stored in LPS order (first two axes flipped)."""
    affine = np.diag([-1.0, -1.0, 1.0, 1.0])
    affine[1, 3] = shape[1] - 1
    return affine


def write_brats(root: str, n_patients: int = 5, seed: int = 0) -> str:
    """``root/BraTS2021_XXXXX/BraTS2021_XXXXX_{flair,t1,t1ce,t2,seg}.nii.gz``; every patient has a tumour."""
    rng = np.random.default_rng(seed)
    brain = _ellipsoid(BRATS_SHAPE, (16, 15, 10), (12, 14, 8.5))  # axial slices 2..18, small at both ends
    for i in range(n_patients):
        patient = f"BraTS2021_{3 * i + 1:05d}"
        centre = (int(rng.integers(11, 20)), int(rng.integers(11, 20)), 6 + 2 * i % 7)
        seg = np.zeros(BRATS_SHAPE, dtype=np.uint8)
        seg[_ellipsoid(BRATS_SHAPE, centre, (5, 5, 2.5))] = 2  # oedema
        seg[_ellipsoid(BRATS_SHAPE, centre, (3, 3, 1.5))] = 4  # enhancing tumour
        seg[_ellipsoid(BRATS_SHAPE, centre, (1.5, 1.5, 1))] = 1  # necrotic core
        seg[~brain] = 0
        for modality, scale in BRATS_MODALITY_SCALE.items():
            volume = scale * (0.6 + 0.05 * rng.standard_normal(BRATS_SHAPE)) * (1 + 0.5 * (seg > 0))
            volume = np.where(brain, np.clip(volume, 1, None), 0).astype(np.int16)
            save_nifti(f"{root}/{patient}/{patient}_{modality}.nii.gz", volume, brats_affine())
        save_nifti(f"{root}/{patient}/{patient}_seg.nii.gz", seg, brats_affine())
    return root


def ct_affine(flip: bool, spacing: float = 0.8, thickness: float = 2.5) -> np.ndarray:
    """Axial CT affine, stored RAS or (``flip``) LPS like many DICOM conversions."""
    sign = -1.0 if flip else 1.0
    affine = np.diag([sign * spacing, sign * spacing, thickness, 1.0])
    affine[:3, 3] = [-sign * 12.8, -sign * 12.8, -100.0]
    return affine


def _ct(rng: np.random.Generator, liver: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """A CT in HU (air, body with noise, constant liver) and its 0/1 liver label."""
    body = _ellipsoid(CT_SHAPE, (16, 16, 6), (15, 13, 100))
    ct = np.where(body, BODY_HU + rng.integers(-10, 11, CT_SHAPE), AIR_HU)
    ct[liver] = LIVER_HU
    return ct, liver.astype(np.uint8)


def liver_mask(i: int) -> np.ndarray:
    """Liver of volume ``i``: about 200 pixels on its middle slice, under 100 on its end slices."""
    return _ellipsoid(CT_SHAPE, (12 + i % 2, 14, 6), (9, 7, 4.5))


def write_lits(root: str, n_volumes: int = 5, seed: int = 0) -> str:
    """``root/volume-N.nii`` (int16 HU) and ``root/segmentation-N.nii`` (0 background, 1 liver, 2 tumour).

    Volumes 0..n-2 have a tumour on 5 slices; the last has none.
    """
    rng = np.random.default_rng(seed)
    for i in range(n_volumes):
        ct, seg = _ct(rng, liver_mask(i))
        if i < n_volumes - 1:
            tumor = _ellipsoid(CT_SHAPE, (10 + i % 2, 14, 4 + i % 3), (2.5, 2.5, 2.5))
            ct[tumor], seg[tumor] = TUMOR_HU, 2
        save_nifti(f"{root}/volume-{i}.nii", ct.astype(np.int16), ct_affine(flip=i % 2 == 1))
        save_nifti(f"{root}/segmentation-{i}.nii", seg, ct_affine(flip=i % 2 == 1))
    return root


def write_btcv(root: str, n_volumes: int = 3, seed: int = 1, hu: bool = True) -> str:
    """``root/img/imgXXXX.nii.gz`` and ``root/label/labelXXXX.nii.gz`` with several organs, liver 6.

    With ``hu=False`` the CT is stored as 0-255 grey values instead of HU.
    """
    rng = np.random.default_rng(seed)
    for i in range(n_volumes):
        liver = liver_mask(i)
        ct, seg = _ct(rng, liver)
        seg *= 6
        for label, (centre, hu_value) in BTCV_ORGANS.items():
            organ = _ellipsoid(CT_SHAPE, centre, (3, 3, 3)) & ~liver
            seg[organ], ct[organ] = label, hu_value
        if not hu:
            ct = np.clip(ct + 1000, 0, 1400) * 255 // 1400
        save_nifti(f"{root}/img/img{i + 1:04d}.nii.gz", ct.astype(np.int16), ct_affine(flip=i % 2 == 0))
        save_nifti(f"{root}/label/label{i + 1:04d}.nii.gz", seg, ct_affine(flip=i % 2 == 0))
    return root


def _jpeg(path: str, rng: np.random.Generator, size: tuple[int, int], abnormal: bool) -> None:
    """A grey OCT-like B-scan: a bright retina band with speckle, a bump for abnormal classes."""
    rows = np.arange(size[0])[:, None]
    band = np.exp(-(((rows - size[0] / 2) / 4.0) ** 2)) * np.ones((1, size[1]))
    if abnormal:
        band[size[0] // 2 - 8 : size[0] // 2, size[1] // 3 : size[1] // 2] = 1.0
    image = np.clip(40 + 180 * band + rng.normal(0, 15, size), 0, 255).astype(np.uint8)
    os.makedirs(os.path.dirname(path), exist_ok=True)
    Image.fromarray(image).save(path, quality=90)


OCT_PATIENTS = {
    "train": {
        "NORMAL": ["1001666", "1016042", "1025144"],
        "CNV": ["1100000"],
        "DME": ["1200000"],
        "DRUSEN": ["1300000"],
    },
    "test": {
        "NORMAL": ["4191000", "4192000", "4193000", "4194000"],
        "CNV": ["5101000", "5102000", "5300000"],
        "DME": ["5300000", "6102000"],  # 5300000 has CNV and DME images: both must land in the same split
        "DRUSEN": ["7101000", "7102000"],
    },
}


def write_oct2017(root: str, images_per_patient: int = 2, seed: int = 3) -> str:
    """``root/{train,test}/{NORMAL,CNV,DME,DRUSEN}/CLASS-PATIENT-N.jpeg`` grey JPEGs of two sizes."""
    rng = np.random.default_rng(seed)
    for split, classes in OCT_PATIENTS.items():
        for cls, patients in classes.items():
            for p, patient in enumerate(patients):
                for n in range(1, images_per_patient + 1):
                    size = OCT_SIZES[(p + n) % 2]
                    _jpeg(f"{root}/{split}/{cls}/{cls}-{patient}-{n}.jpeg", rng, size, cls != "NORMAL")
    return root


def write_resc(root: str, size: int = 40, seed: int = 4) -> str:
    """RESC as shipped for BMAD: RGB and grey PNGs, masks 0/1 in valid and 0/255 in test, no valid good masks."""
    rng = np.random.default_rng(seed)

    def png(path: str, array: np.ndarray, rgb: bool = False) -> None:
        os.makedirs(os.path.dirname(path), exist_ok=True)
        image = Image.fromarray(array.astype(np.uint8))
        (image.convert("RGB") if rgb else image).save(path)

    def scan() -> np.ndarray:
        return np.clip(60 + 120 * np.sin(np.arange(size) / 5)[:, None] + rng.normal(0, 10, (size, size)), 0, 255)

    for i in range(6):
        png(f"{root}/train/good/{i:04d}.png", scan(), rgb=i % 2 == 0)
    for split, foreground in (("valid", 1), ("test", 255)):
        for i in range(2):
            png(f"{root}/{split}/good/img/{split}_{i:03d}.png", scan(), rgb=True)
            if split == "test":
                png(f"{root}/{split}/good/label/{split}_{i:03d}.png", np.zeros((size, size)))
        for i in range(3):
            image, mask = scan(), np.zeros((size, size))
            mask[10 + i : 18 + i, 12:22] = foreground
            image[mask > 0] = 250
            png(f"{root}/{split}/Ungood/img/{split}_{i + 10:03d}.png", image, rgb=True)
            png(f"{root}/{split}/Ungood/label/{split}_{i + 10:03d}.png", mask)
    return root


BRATS_OPTIONS = {"slice_range": BRATS_SLICE_RANGE, "valid_fraction": 0.2, "test_fraction": 0.2, "seed": 0}
LIVER_OPTIONS = {"valid_fraction": 0.2, "seed": 0}
OCT2017_OPTIONS = {"valid_fraction": 0.3, "seed": 0}


@pytest.fixture(scope="session")
def brats_raw(tmp_path_factory) -> str:
    return write_brats(str(tmp_path_factory.mktemp("raw") / "BraTS2021_Training_Data"))


@pytest.fixture(scope="session")
def lits_raw(tmp_path_factory) -> str:
    return write_lits(str(tmp_path_factory.mktemp("raw") / "LiTS"))


@pytest.fixture(scope="session")
def btcv_raw(tmp_path_factory) -> str:
    return write_btcv(str(tmp_path_factory.mktemp("raw") / "BTCV"))


@pytest.fixture(scope="session")
def oct2017_raw(tmp_path_factory) -> str:
    return write_oct2017(str(tmp_path_factory.mktemp("raw") / "OCT2017"))


@pytest.fixture(scope="session")
def resc_raw(tmp_path_factory) -> str:
    return write_resc(str(tmp_path_factory.mktemp("raw") / "RESC"))


@pytest.fixture(scope="session")
def brats_out(brats_raw, tmp_path_factory) -> str:
    out = str(tmp_path_factory.mktemp("prepared") / "brats")
    convert_brats(brats_raw, out, **BRATS_OPTIONS)
    return out


@pytest.fixture(scope="session")
def liver_out(lits_raw, btcv_raw, tmp_path_factory) -> str:
    out = str(tmp_path_factory.mktemp("prepared") / "liver")
    convert_liver(lits_raw, btcv_raw, out, **LIVER_OPTIONS)
    return out


@pytest.fixture(scope="session")
def oct2017_out(oct2017_raw, tmp_path_factory) -> str:
    out = str(tmp_path_factory.mktemp("prepared") / "oct2017")
    convert_oct2017(oct2017_raw, out, **OCT2017_OPTIONS)
    return out


@pytest.fixture(scope="session")
def resc_out(resc_raw, tmp_path_factory) -> str:
    out = str(tmp_path_factory.mktemp("prepared") / "resc")
    convert_resc(resc_raw, out)
    return out


def list_pngs(folder: str) -> list[str]:
    """Sorted PNG file names of ``folder`` (empty when it does not exist)."""
    return sorted(f for f in os.listdir(folder) if f.endswith(".png")) if os.path.isdir(folder) else []


def read_png(path: str) -> np.ndarray:
    with Image.open(path) as image:
        assert image.mode == "L", f"{path} is {image.mode}, expected 8-bit grey"
        return np.asarray(image)
