"""A tiny archive (NIfTI volumes and a DICOM series) and tiny calibrated checkpoints for the archive-triage tests."""

from __future__ import annotations

import os
import shutil

import torch

from multiad_monai.inference import AnomalyInferer, list_inputs, output_names
from multiad_monai.networks import MultiAD
from multiad_monai.recipe import Recipe
from tests.conftest import write_volumes


def write_archive(root: str, n_volumes: int = 6, dicom: bool = True) -> str:
    """``root`` with ``case0..case<n-1>.nii.gz`` (the volumes fixture's, the first with a lesion) and, with
    ``dicom``, one CT series in ``root/patient/ct/``; returns ``root``."""
    staging = root + "_layout"
    write_volumes(staging, n_train=n_volumes, n_test=0)
    shutil.copytree(os.path.join(staging, "imagesTr"), root)
    shutil.rmtree(staging)
    if dicom:
        from tests.dicom import ct_volume, write_series

        write_series(os.path.join(root, "patient", "ct"), ct_volume((8, 24, 24)), series_number=7, description="AX CT")
    return root


def tiny_checkpoints(folder: str, archive: str) -> tuple[str, str]:
    """Two checkpoints of one 32 px network (``model.pt``, ``other.pt``) that differ in calibration only.

    ``model.pt`` puts the normal mean at the archive's lowest score and the threshold between its two middle
    scores, so its normalised scores spread over ``[0, 1]``; ``other.pt`` puts the threshold at twice the highest
    score (another SHA-256, other normalised scores, none anomalous).
    """
    torch.manual_seed(0)
    network = MultiAD(Recipe.paper(image_size=32))
    network.normalizer.fit_thresholds(torch.rand(4) + 1.0, torch.rand(4, 1, 32, 32))
    scores = torch.tensor(_scores(AnomalyInferer(network), archive), dtype=torch.float32)
    maps = torch.rand(4, 1, 32, 32) * scores.median()
    paths = []
    ordered, half = scores.sort().values, len(scores) // 2
    middle = ordered[half - 1 : half + 1].mean()  # no score lies at a threshold
    calibrations = {"model.pt": (ordered[0], middle), "other.pt": (torch.tensor(0.0), 2 * ordered[-1])}
    for name, (low, threshold) in calibrations.items():
        # two values: mean low, std as wanted
        half_spread = (threshold - low) / network.recipe.threshold_sigmas / 2**0.5
        network.normalizer.fit_thresholds(torch.stack([low - half_spread, low + half_spread]), maps)
        paths.append(os.path.join(folder, name))
        torch.save(network.state_dict(), paths[-1])
    return paths[0], paths[1]


def _scores(inferer: AnomalyInferer, archive: str) -> list[float]:
    inputs = list_inputs(archive)
    scratch = archive.rstrip("/") + "_scratch"
    os.makedirs(scratch)
    try:
        rows = inferer.write_results(inputs, output_names(inputs), scratch)
    finally:
        shutil.rmtree(scratch)
    return [float(row["score"]) for row in rows.values()]
