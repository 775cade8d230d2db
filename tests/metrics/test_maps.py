"""One copy of an evaluation's maps for pixel AUROC, AUPRO and the evaluation report; one PRO curve."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from ignite.engine import Engine

from multiad_monai.handlers.evaluation_report import EvaluationReport
from multiad_monai.metrics import EvaluationMaps, PixelAUPRO, PixelAUROC, functional, maps, pixel_aupro, pixel_auroc
from multiad_monai.networks import MultiAD
from multiad_monai.recipe import Recipe

SIZE, BATCH, N_BATCHES = 16, 4, 3


def batches() -> list[dict]:
    generator = torch.Generator().manual_seed(0)
    out = []
    for b in range(N_BATCHES):
        mask = torch.zeros(BATCH, 1, SIZE, SIZE, dtype=torch.bool)
        mask[1::2, :, 3 + b : 8, 4:9] = True
        out.append(
            {
                "image": torch.rand(BATCH, 3, SIZE, SIZE, generator=generator),
                "label": torch.tensor([0, 1, 0, 1]),
                "pred_score": torch.rand(BATCH, generator=generator),
                "anomaly_map": torch.rand(BATCH, 1, SIZE, SIZE, generator=generator) + 0.5 * mask,
                "mask": mask,
            }
        )
    return out


@pytest.mark.parametrize("fpr_limit", [0.3, 0.05])
def test_metrics_and_report_share_one_copy_and_one_pro_curve(tmp_path, monkeypatch, fpr_limit):
    calls = []
    original = functional.pro_curve
    monkeypatch.setattr(functional, "pro_curve", lambda *a: calls.append(1) or original(*a))
    shared = EvaluationMaps()
    engine = Engine(lambda e, batch: batch)
    PixelAUROC(maps=shared).attach(engine, "pixel_auroc")
    PixelAUPRO(SIZE, fpr_limit, maps=shared).attach(engine, "pixel_aupro")
    EvaluationReport(str(tmp_path), MultiAD(Recipe.paper(image_size=SIZE)), fpr_limit=fpr_limit, maps=shared).attach(
        engine
    )
    data = batches()
    for _ in range(2):  # a second run starts afresh
        calls.clear()
        engine.run(data, max_epochs=1)
        held, _ = shared.gathered()
        assert len(shared._maps) == 1 and held.shape == (N_BATCHES * BATCH, SIZE * SIZE)
        assert calls == [1] and (tmp_path / "pro_curve.png").is_file()
    all_maps = torch.cat([b["anomaly_map"][:, 0] for b in data]).numpy()
    all_masks = torch.cat([b["mask"][:, 0] for b in data]).numpy()
    assert engine.state.metrics["pixel_auroc"] == pixel_auroc(all_maps, all_masks)  # bit-identical
    assert engine.state.metrics["pixel_aupro"] == pixel_aupro(all_maps, all_masks, fpr_limit)


def test_pixel_aupro_is_nan_without_anomalous_pixels():
    metric = PixelAUPRO(SIZE)
    metric.update(maps.pixel_output({"anomaly_map": torch.rand(2, 1, SIZE, SIZE)}))
    assert np.isnan(metric.compute())


@pytest.mark.parametrize("fpr_limit", [0.0, 1.5])
def test_pixel_aupro_rejects_a_bad_fpr_limit(fpr_limit):
    with pytest.raises(ValueError, match="fpr_limit"):
        PixelAUPRO(SIZE, fpr_limit)
