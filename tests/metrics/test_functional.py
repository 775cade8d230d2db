from __future__ import annotations

import numpy as np
import pytest
import torch
from scipy import ndimage
from sklearn.metrics import roc_auc_score

from multiad_monai.metrics import ImageAUROC, PixelAUPRO, image_auroc, image_f1_max, pixel_aupro, pixel_auroc


def brute_force_aupro(maps: np.ndarray, masks: np.ndarray, limit: float = 0.3) -> float:
    """PRO by its definition at every distinct threshold, then the same trapezoid integral."""
    regions = []
    for i, mask in enumerate(masks):
        labelled, n = ndimage.label(mask, structure=np.ones((3, 3)))
        regions += [(i, labelled == r) for r in range(1, n + 1)]
    normal = ~masks.astype(bool)
    points = [(0.0, 0.0)]
    for t in np.unique(maps)[::-1]:
        fpr = (maps[normal] >= t).mean()
        pro = np.mean([(maps[i][region] >= t).mean() for i, region in regions])
        points.append((fpr, pro))
    fpr, pro = np.array(points).T
    keep = fpr <= limit
    x, y = fpr[keep], pro[keep]
    if x[-1] < limit:
        j = int(np.argmax(fpr > limit))
        y_limit = pro[j - 1] + (pro[j] - pro[j - 1]) * (limit - fpr[j - 1]) / (fpr[j] - fpr[j - 1])
        x, y = np.r_[x, limit], np.r_[y, y_limit]
    return float(np.sum(np.diff(x) * (y[1:] + y[:-1]) / 2) / limit)  # numpy 1.x and 2.x alike


@pytest.mark.parametrize("seed", range(6))
@pytest.mark.parametrize("limit", [0.3, 1.0, 0.05])
def test_aupro_matches_brute_force(seed, limit):
    rng = np.random.default_rng(seed)
    masks = np.zeros((3, 12, 12), dtype=bool)
    masks[0, 2:5, 2:6] = True
    masks[0, 8:11, 8:10] = True  # a second region in the same image
    masks[1, 5:9, 1:4] = True
    maps = rng.random((3, 12, 12)) + 0.6 * masks * rng.random((3, 12, 12))
    maps = np.round(maps, 2)  # ties between pixels
    assert pixel_aupro(maps, masks, limit) == pytest.approx(brute_force_aupro(maps, masks, limit), abs=1e-9)


def test_aupro_perfect_and_region_weighting():
    masks = np.zeros((1, 10, 10), dtype=bool)
    masks[0, 0:2, 0:2] = True  # small region, found
    masks[0, 5:10, 5:10] = True  # large region, missed
    perfect = masks.astype(float)
    assert pixel_aupro(perfect, masks) == pytest.approx(1.0)
    half = np.zeros((1, 10, 10))
    half[0, 0:2, 0:2] = 1.0
    # each region counts equally, whatever its size: the small one alone gives PRO 0.5 at FPR 0; the next
    # (last) point is (1, 1), so the trapezoid up to 0.3 is 0.3 * (0.5 + 0.65) / 2, normalised: 0.575
    assert pixel_aupro(half, masks, 0.3) == pytest.approx(0.575)


def test_metrics_on_known_cases():
    labels = np.array([0, 0, 1, 1])
    assert image_auroc(np.array([0.1, 0.2, 0.3, 0.4]), labels) == 1.0
    assert image_auroc(np.array([0.4, 0.3, 0.2, 0.1]), labels) == 0.0
    assert image_f1_max(np.array([0.1, 0.35, 0.3, 0.4]), labels) == pytest.approx(0.8)
    assert np.isnan(image_auroc(np.array([0.1, 0.2]), np.array([0, 0])))
    masks = np.zeros((2, 4, 4), dtype=bool)
    masks[1, :2, :2] = True
    assert pixel_auroc(masks.astype(float), masks) == 1.0
    assert np.isnan(pixel_aupro(np.random.rand(2, 4, 4), np.zeros((2, 4, 4))))


def test_pixel_auroc_matches_sklearn_with_ties():
    rng = np.random.default_rng(0)
    masks = rng.random((3, 16, 16)) < 0.1
    maps = np.round(rng.normal(size=masks.shape) + masks, 1).astype(np.float32)  # rounded: many tied scores
    assert pixel_auroc(maps, masks) == pytest.approx(roc_auc_score(masks.ravel(), maps.ravel()), abs=1e-12)
    assert pixel_auroc(np.zeros(masks.shape), masks) == 0.5
    assert np.isnan(pixel_auroc(maps, np.zeros(masks.shape)))


def test_ignite_metrics_accumulate_batches():
    auroc, aupro = ImageAUROC(), PixelAUPRO(image_size=8)
    masks = torch.zeros(4, 1, 8, 8, dtype=torch.bool)
    masks[2:, :, 2:5, 2:5] = True
    for start in (0, 2):
        output = {
            "pred_score": torch.tensor([0.1, 0.2]) + start,
            "label": torch.tensor([0, 0]) if start == 0 else torch.tensor([1, 1]),
            "anomaly_map": masks[start : start + 2].float(),
            "mask": masks[start : start + 2],
        }
        auroc.update(auroc._output_transform(output))
        aupro.update(aupro._output_transform(output))
    assert auroc.compute() == 1.0
    assert aupro.compute() == pytest.approx(1.0)
