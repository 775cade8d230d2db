"""Tiny seeded studies for the MONAI Label tests: stripy volumes, a bright cubic lesion, a 2D image."""

from __future__ import annotations

import os
import zlib

import nibabel as nib
import numpy as np
import SimpleITK as sitk
from PIL import Image

RAS_AFFINE = np.array([[2.0, 0, 0, -24], [0, 2.0, 0, -24], [0, 0, 2.0, -12], [0, 0, 0, 1]])
# oblique and stored left-posterior-inferior: the label must come back with exactly this header
TILTED_AFFINE = np.array([[-1.9, 0.2, 0, 30], [0.1, -2.0, 0.3, 20], [0, 0.2, -2.5, 15], [0, 0, 0, 1]])
LESION = (slice(6, 14), slice(6, 14), slice(4, 7))  # voxels of the lesion cube


def volume(name: str, shape=(24, 24, 12), lesion: bool = False) -> np.ndarray:
    """Stripes along the second axis with noise, seeded by ``name``; the lesion cube is bright."""
    rng = np.random.default_rng(zlib.crc32(name.encode()))
    stripes = 0.5 + 0.25 * np.sin(2 * np.pi * np.arange(shape[1]) / 8)
    data = (stripes[None, :, None] + rng.normal(0, 0.05, shape)).clip(0, 1) * 100
    if lesion:
        data[LESION] = 140
    return data.astype(np.float32)


def save_volume(path: str, lesion: bool = False, affine: np.ndarray = RAS_AFFINE, shape=(24, 24, 12)) -> str:
    os.makedirs(os.path.dirname(path), exist_ok=True)
    nib.save(nib.Nifti1Image(volume(os.path.basename(path), shape, lesion), affine), path)
    return path


def write_png(path: str, size=(40, 48)) -> str:
    os.makedirs(os.path.dirname(path), exist_ok=True)
    stripes = 0.5 + 0.25 * np.sin(2 * np.pi * np.arange(size[1]) / 8)
    Image.fromarray((np.ones((size[0], 1)) * stripes * 255).astype(np.uint8)).save(path)
    return path


def write_dicom_series(folder: str, name: str = "dicom", lesion: bool = True) -> sitk.Image:
    """One DICOM file per axial slice (what a DICOMweb datastore hands the app as a folder); returns the volume."""
    os.makedirs(folder, exist_ok=True)
    image = sitk.GetImageFromArray(volume(name, lesion=lesion).transpose(2, 1, 0).astype(np.int16))  # (z, y, x)
    image.SetSpacing((1.5, 1.5, 3.0))
    image.SetOrigin((-20.0, 10.0, 5.0))
    uid = "1.2.826.0.1.3680043.2.1125." + str(zlib.crc32(name.encode()))
    writer = sitk.ImageFileWriter()
    writer.KeepOriginalImageUIDOn()
    for z in range(image.GetDepth()):
        plane = image[:, :, z]
        position = "\\".join(str(v) for v in image.TransformIndexToPhysicalPoint((0, 0, z)))
        tags = {
            "0008|0060": "MR", "0020|000d": uid + ".1", "0020|000e": uid + ".2", "0020|0013": str(z + 1),
            "0020|0032": position, "0020|0037": "1\\0\\0\\0\\1\\0", "0028|0030": "1.5\\1.5", "0018|0050": "3.0",
        }  # fmt: skip
        for tag, value in tags.items():
            plane.SetMetaData(tag, value)
        writer.SetFileName(os.path.join(folder, f"{z:03d}.dcm"))
        writer.Execute(plane)
    return image
