"""The embedded brain demo: real anatomy (nilearn's MNI152 T1 template, shipped in the nilearn wheel) with
per-subject deformations, bias fields and noise, plus synthetic lesions (dark core, bright rim) with known masks.

Written as NIfTI in the ``volumes`` layout (``imagesTr``/``labelsTr``/``imagesTs``/``labelsTs``), once.
"""

from __future__ import annotations

import logging
import os

import nibabel as nib
import numpy as np
from scipy import ndimage

from multiad_monai.utils import staged_dir

__all__ = ["build_brain_demo"]

logger = logging.getLogger(__name__)


def _template() -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    from nilearn.datasets import load_mni152_brain_mask, load_mni152_template

    template = load_mni152_template(resolution=2)
    brain = load_mni152_brain_mask(resolution=2).get_fdata() > 0
    return template.get_fdata().astype(np.float32), brain, template.affine


def _deform(volume: np.ndarray, rng: np.random.Generator, order: int) -> np.ndarray:
    """Small random scaling and in-plane rotation about the volume centre (same draw for image and mask)."""
    angle = np.deg2rad(rng.uniform(-6, 6))
    scale = rng.uniform(0.93, 1.07, size=3)
    rotation = np.array([[np.cos(angle), -np.sin(angle), 0], [np.sin(angle), np.cos(angle), 0], [0, 0, 1]])
    matrix = rotation @ np.diag(1 / scale)
    centre = (np.array(volume.shape) - 1) / 2
    offset = centre - matrix @ centre
    return ndimage.affine_transform(volume, matrix, offset=offset, order=order)


def _subject(template: np.ndarray, brain: np.ndarray, rng: np.random.Generator, n_lesions: int):
    seed = int(rng.integers(1 << 31))
    image = _deform(template, np.random.default_rng(seed), order=1)
    brain = _deform(brain.astype(np.float32), np.random.default_rng(seed), order=0) > 0.5
    # smooth multiplicative bias field, as from a receive coil
    bias = ndimage.gaussian_filter(rng.normal(0, 1, size=image.shape), sigma=12)
    image = image * (1 + 0.15 * bias / (np.abs(bias).max() + 1e-8))
    lesions = np.zeros(image.shape, dtype=bool)
    grid = np.indices(image.shape).astype(np.float32)
    candidates = np.argwhere(ndimage.binary_erosion(brain, iterations=6))
    for _ in range(n_lesions):
        centre = candidates[rng.integers(len(candidates))]
        radii = rng.uniform(4.0, 8.0, size=3)
        distance = np.sqrt(sum(((grid[i] - centre[i]) / radii[i]) ** 2 for i in range(3)))
        # flat top and bottom, so that every axial slice labelled anomalous shows a lesion of visible size
        # (an ellipsoid's tips are a few voxels wide: "anomalous" slices that nothing could find)
        within = brain & (np.abs(grid[2] - centre[2]) <= 0.6 * radii[2])
        lesions |= (distance <= 1) & within
        # a dark necrotic-looking core inside a bright rim, blended smoothly into the tissue
        weight = np.clip(1.3 - distance, 0, 1) * within
        core = rng.uniform(0.1, 0.25) + 0.05 * rng.normal(size=image.shape)
        rim = np.exp(-(((distance - 1.0) / 0.25) ** 2)) * within
        image = (1 - weight) * image + weight * core + rng.uniform(0.2, 0.35) * rim
    image = image + rng.normal(0, 0.02, size=image.shape)
    image = np.clip(image, 0, None) * brain
    return image.astype(np.float32), lesions.astype(np.uint8)


def build_brain_demo(out_dir: str, n_train: int = 8, n_test: int = 6, seed: int = 0) -> str:
    """Create the demo dataset in ``out_dir`` unless it exists; returns ``out_dir``.

    Training subjects: ``n_train`` volumes, half of them with lesions (their lesion slices are excluded
    from training by the slicing transform). Test subjects: ``n_test`` volumes, all but one with lesions.
    """
    if os.path.isdir(os.path.join(out_dir, "imagesTs")):
        return out_dir
    logger.info(f"building the brain demo dataset in {out_dir}")
    template, brain, affine = _template()
    rng = np.random.default_rng(seed)
    with staged_dir(out_dir) as staging:  # appears whole or not at all
        for split, n, suffix in (("Tr", n_train, "train"), ("Ts", n_test, "test")):
            os.makedirs(os.path.join(staging, f"images{split}"))
            os.makedirs(os.path.join(staging, f"labels{split}"))
            for i in range(n):
                n_lesions = int(rng.integers(1, 4)) if (split == "Ts" and i > 0) or (split == "Tr" and i % 2) else 0
                image, mask = _subject(template, brain, rng, n_lesions)
                name = f"sub-{suffix}{i:02d}.nii.gz"
                nib.save(nib.Nifti1Image(image, affine), os.path.join(staging, f"images{split}", name))
                nib.save(nib.Nifti1Image(mask, affine), os.path.join(staging, f"labels{split}", name))
    return out_dir
