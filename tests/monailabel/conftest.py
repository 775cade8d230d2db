"""A brain model trained one epoch at 64 px on tiny seeded volumes, shared by the MONAI Label tests."""

from __future__ import annotations

import os

import nibabel as nib
import numpy as np
import pytest

from tests.bundles.helpers import run_in_process
from tests.monailabel.studies import LESION, save_volume


@pytest.fixture(scope="session")
def checkpoint(tmp_path_factory) -> str:
    """The brain bundle trained one epoch at 64 px on five normal volumes (test split: one lesion volume)."""
    root = tmp_path_factory.mktemp("monailabel_model")
    data, out = root / "data", root / "out"
    for i in range(5):
        save_volume(str(data / "imagesTr" / f"train{i}.nii.gz"))
    save_volume(str(data / "imagesTs" / "test0.nii.gz"), lesion=True)
    label = np.zeros((24, 24, 12), dtype=np.uint8)
    label[LESION] = 1
    os.makedirs(data / "labelsTs")
    affine = nib.load(data / "imagesTs" / "test0.nii.gz").affine
    nib.save(nib.Nifti1Image(label, affine), data / "labelsTs" / "test0.nii.gz")
    run_in_process(
        "brain", "training", dataset_dir=str(data), output_dir=str(out), ckpt_path=str(out / "model.pt"),
        epochs=1, max_iterations=8, image_size=64, batch_size=4, num_overlays=1, tracking_uri=f"sqlite:///{out}/mlruns.db",
    )  # fmt: skip
    return str(out / "model.pt")
