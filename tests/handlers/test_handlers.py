from __future__ import annotations

import json
import os

import pytest
import torch
from ignite.engine import Engine
from monai.data import DataLoader

from multiad_monai.handlers import (
    CalibrationHandler,
    MetricsJSONWriter,
    OverlaySaver,
    last_checkpoint,
)
from multiad_monai.handlers.metrics_writer import write_json_atomic
from multiad_monai.networks import MultiAD
from multiad_monai.recipe import Recipe


def test_last_checkpoint(tmp_path):
    assert last_checkpoint(str(tmp_path)) is None
    for epoch in (2, 10, 9):
        (tmp_path / f"checkpoint_epoch={epoch}.pt").write_bytes(b"")
    (tmp_path / "model.pt").write_bytes(b"")
    assert last_checkpoint(str(tmp_path)).endswith("checkpoint_epoch=10.pt")


def test_metrics_writer_drops_nan_and_adds_extra(tmp_path):
    engine = Engine(lambda e, b: None)
    engine.state.metrics = {"image_auroc": 0.9, "pixel_auroc": float("nan")}
    MetricsJSONWriter(str(tmp_path), extra=lambda: {"n_test": 3})(engine)
    assert json.loads((tmp_path / "metrics.json").read_text(encoding="utf-8")) == {"image_auroc": 0.9, "n_test": 3}


def test_atomic_json_leaves_nothing_half_written(tmp_path):
    path = tmp_path / "m.json"
    write_json_atomic(str(path), {"a": 1})
    with pytest.raises(TypeError):
        write_json_atomic(str(path), {"a": object()})
    assert json.loads(path.read_text(encoding="utf-8")) == {"a": 1}
    assert os.listdir(tmp_path) == ["m.json"]


def test_calibration_handler_fills_buffers():
    network = MultiAD(Recipe.paper(image_size=32))
    loader = DataLoader([{"image": torch.rand(3, 32, 32)} for _ in range(4)], batch_size=2)
    engine = Engine(lambda e, b: None)
    CalibrationHandler(network, loader).attach(engine)
    engine.run([0], max_epochs=1)
    assert network.is_calibrated and network.image_threshold > network.normalizer.score_mean


def test_overlay_saver_writes_pngs(tmp_path):
    network = MultiAD(Recipe.paper())
    mask = torch.zeros(2, 1, 16, 16, dtype=torch.bool)
    mask[1, :, 2:6, 2:6] = True
    output = {
        "image": torch.rand(2, 3, 16, 16),
        "label": torch.tensor([0, 1]),
        "anomaly_map": torch.rand(2, 1, 16, 16),
        "mask": mask,
    }
    engine = Engine(lambda e, b: output)
    OverlaySaver(str(tmp_path), network, num_images=2).attach(engine)
    engine.run([0], max_epochs=1)
    assert sorted(os.listdir(tmp_path / "overlays")) == ["00_anomalous.png", "01_normal.png"]


def test_atomic_checkpoint_saver_writes_through_a_temporary_file(tmp_path, monkeypatch):
    from multiad_monai.handlers import AtomicCheckpointSaver

    saver = AtomicCheckpointSaver(str(tmp_path), {"net": torch.nn.Linear(2, 2)}, save_interval=1, save_final=True)
    engine = Engine(lambda e, b: None)
    saver.attach(engine)

    def interrupted_save(obj, f, **kwargs):
        f.write(b"partial")
        raise KeyboardInterrupt  # a kill in the middle of writing

    monkeypatch.setattr(torch, "save", interrupted_save)
    with pytest.raises(KeyboardInterrupt):
        engine.run([0], max_epochs=1)
    assert os.listdir(tmp_path) == []  # no truncated checkpoint left behind
