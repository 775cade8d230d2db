"""Session fixtures: tiny seeded datasets written in the real on-disk layouts."""

from __future__ import annotations

import os

import nibabel as nib
import numpy as np
import pytest
from PIL import Image

SHARED_DATA = os.path.join(os.path.dirname(__file__), "..", "..", "shared", "data")


def _texture(rng: np.random.Generator, size: int) -> np.ndarray:
    """A stripy texture with noise: every normal image looks alike."""
    x = np.arange(size)
    stripes = 0.5 + 0.25 * np.sin(2 * np.pi * x / 8)[None, :] * np.ones((size, 1))
    return np.clip(stripes + rng.normal(0, 0.05, (size, size)), 0, 1)


def _defect(image: np.ndarray, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    size = image.shape[0]
    r, c = rng.integers(4, size - 14, size=2)
    mask = np.zeros_like(image, dtype=bool)
    mask[r : r + 10, c : c + 10] = True
    image = image.copy()
    image[mask] = 1.0
    return image, mask


def _png(path: str, array: np.ndarray) -> None:
    os.makedirs(os.path.dirname(path), exist_ok=True)
    Image.fromarray((np.clip(array, 0, 1) * 255).astype(np.uint8)).save(path)


def write_mvtec(
    root: str,
    n_train: int = 12,
    n_good: int = 4,
    n_bad: int = 4,
    size: int = 48,
    seed: int = 0,
    masks: bool = True,
    width: int | None = None,
) -> str:
    """MVTec AD layout; ``masks=False`` gives an image-level set (no ground_truth/), ``width`` non-square images."""
    rng = np.random.default_rng(seed)
    for i in range(n_train):
        _png(f"{root}/train/good/{i:03d}.png", _texture(rng, size))
    for i in range(n_good):
        _png(f"{root}/test/good/{i:03d}.png", _texture(rng, size))
    for i in range(n_bad):
        image, mask = _defect(_texture(rng, size), rng)
        _png(f"{root}/test/scratch/{i:03d}.png", image)
        if masks:
            _png(f"{root}/ground_truth/scratch/{i:03d}_mask.png", mask.astype(float))
    if width:
        for path in _all_pngs(root):
            Image.open(path).resize((width, size)).save(path)
    return root


def _all_pngs(root: str) -> list[str]:
    return [os.path.join(d, f) for d, _, files in os.walk(root) for f in files if f.endswith(".png")]


def write_bmad(root: str, size: int = 48, seed: int = 1) -> str:
    rng = np.random.default_rng(seed)
    for i in range(10):
        _png(f"{root}/train/good/{i:03d}.png", _texture(rng, size))
    for split in ("valid", "test"):
        for i in range(3):
            _png(f"{root}/{split}/good/img/{i:03d}.png", _texture(rng, size))
            _png(f"{root}/{split}/good/label/{i:03d}.png", np.zeros((size, size)))
            image, mask = _defect(_texture(rng, size), rng)
            _png(f"{root}/{split}/Ungood/img/{i:03d}.png", image)
            _png(f"{root}/{split}/Ungood/label/{i:03d}.png", mask.astype(float))
    return root


def write_volumes(root: str, n_train: int = 3, n_test: int = 2, shape=(24, 24, 12), seed: int = 2) -> str:
    """NIfTI volumes in RAS 2 mm voxels; test volumes carry a cubic lesion (label 1)."""
    rng = np.random.default_rng(seed)
    affine = np.diag([2.0, 2.0, 2.0, 1.0])
    affine[:3, 3] = [-24, -24, -12]
    for split, n in (("Tr", n_train), ("Ts", n_test)):
        os.makedirs(f"{root}/images{split}", exist_ok=True)
        os.makedirs(f"{root}/labels{split}", exist_ok=True)
        for i in range(n):
            volume = np.stack([_texture(rng, shape[0])[:, : shape[1]] for _ in range(shape[2])], -1) * 100
            label = np.zeros(shape, dtype=np.uint8)
            if split == "Ts" or i == 0:
                label[6:14, 6:14, 4:7] = 1
                volume[label > 0] = 140
            nib.save(nib.Nifti1Image(volume.astype(np.float32), affine), f"{root}/images{split}/case{i}.nii.gz")
            nib.save(nib.Nifti1Image(label, affine), f"{root}/labels{split}/case{i}.nii.gz")
    return root


@pytest.fixture(scope="session")
def mvtec_dir(tmp_path_factory) -> str:
    return write_mvtec(str(tmp_path_factory.mktemp("mvtec") / "bottle"))


@pytest.fixture(scope="session")
def bmad_dir(tmp_path_factory) -> str:
    return write_bmad(str(tmp_path_factory.mktemp("bmad") / "brain"))


@pytest.fixture(scope="session")
def volumes_dir(tmp_path_factory) -> str:
    return write_volumes(str(tmp_path_factory.mktemp("volumes") / "brain3d"))


def write_ct_volumes(root: str, n_train: int = 3, n_test: int = 2, shape=(24, 24, 10), seed: int = 3) -> str:
    """CT volumes in HU with LiTS-style label maps: 1 liver, 2 tumour inside the liver; air -1000 around."""
    rng = np.random.default_rng(seed)
    affine = np.diag([1.5, 1.5, 3.0, 1.0])
    for split, n in (("Tr", n_train), ("Ts", n_test)):
        os.makedirs(f"{root}/images{split}", exist_ok=True)
        os.makedirs(f"{root}/labels{split}", exist_ok=True)
        for i in range(n):
            volume = np.full(shape, -1000.0) + rng.normal(0, 5, shape)
            label = np.zeros(shape, dtype=np.uint8)
            label[4:20, 4:20, 2:8] = 1
            volume[label == 1] = 60 + rng.normal(0, 10, int((label == 1).sum()))
            if split == "Ts":
                label[8:12, 8:12, 4:6] = 2
                volume[label == 2] = 10
            nib.save(nib.Nifti1Image(volume.astype(np.float32), affine), f"{root}/images{split}/ct{i}.nii.gz")
            nib.save(nib.Nifti1Image(label, affine), f"{root}/labels{split}/ct{i}.nii.gz")
    return root
