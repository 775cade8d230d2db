"""Each adapter of ``multiad_monai.upstream`` against the installed MONAI, ignite, MLflow and torch.

A failure here after an upgrade means the private attribute moved: fix ``multiad_monai/upstream.py``, not the
callers.
"""

from __future__ import annotations

import os

import ignite
import monai
import pytest
import torch
from ignite.engine import Engine
from ignite.metrics import EpochMetric
from monai.handlers import CheckpointSaver, MLFlowHandler
from monai.networks.blocks.activation import MemoryEfficientSwish, Swish
from monai.networks.nets import EfficientNet
from torch import nn

from multiad_monai.upstream import (
    efficientnet_parts,
    enable_atomic_save,
    epoch_metric_outputs,
    mlflow_run_and_client,
    module_with_children,
    set_relu6,
)

MONAI = f"MONAI {monai.__version__}"
IGNITE = f"ignite {ignite.__version__}"
# two stages at stride 2 and 4: small enough for a CPU test, the same MBConv blocks as B0
BLOCKS = ["r1_k3_s11_e1_i32_o16", "r1_k3_s22_e6_i16_o24"]


def _efficientnet() -> EfficientNet:
    return EfficientNet(BLOCKS, spatial_dims=2, in_channels=3, num_classes=10).eval()


def test_efficientnet_parts_are_the_forward_path():
    net = _efficientnet()
    stem, stages = efficientnet_parts(net)
    assert len(stages) == len(BLOCKS), f"{MONAI}: EfficientNet no longer keeps one stage per block string"
    seen = []
    stages[-1].register_forward_hook(lambda module, args, out: seen.append(out))
    x = torch.rand(2, 3, 32, 32)
    with torch.no_grad():
        net(x)
        ours = x
        for stage in [stem, *stages]:
            ours = stage(ours)
    assert ours.shape == (2, 24, 8, 8)
    assert torch.equal(ours, seen[0]), f"{MONAI}: EfficientNet.forward no longer runs stem then _blocks"


def test_set_relu6_leaves_no_swish():
    net = set_relu6(_efficientnet())
    swish = [name for name, m in net.named_modules() if isinstance(m, Swish | MemoryEfficientSwish)]
    assert not swish, f"{MONAI}: EfficientNet has swish outside `_swish` attributes: {swish}"
    n_blocks = sum(len(stage) for stage in efficientnet_parts(net)[1])
    assert sum(isinstance(m, nn.ReLU6) for m in net.modules()) == 1 + n_blocks


def _interrupted_save(obj, f, **kwargs):
    """A kill in the middle of writing a checkpoint (to a path or to an open file)."""
    if isinstance(f, str | os.PathLike):
        with open(f, "wb") as file:
            file.write(b"partial")
    else:
        f.write(b"partial")
    raise KeyboardInterrupt


@pytest.mark.parametrize(
    "callback, kwargs",
    [
        ("completed", {"save_final": True}),
        ("interval_completed", {"save_interval": 1}),
        ("metrics_completed", {"save_key_metric": True, "key_metric_name": "auroc"}),
    ],
)
@pytest.mark.parametrize("atomic", [True, False])
def test_enable_atomic_save_leaves_no_truncated_checkpoint(tmp_path, monkeypatch, callback, kwargs, atomic):
    saver = CheckpointSaver(str(tmp_path), {"net": nn.Linear(2, 2)}, **kwargs)
    if atomic:
        assert enable_atomic_save(saver) is saver
    engine = Engine(lambda e, b: None)
    engine.run([0], max_epochs=1)
    engine.state.metrics["auroc"] = 0.5
    monkeypatch.setattr(torch, "save", _interrupted_save)
    with pytest.raises(KeyboardInterrupt):
        getattr(saver, callback)(engine)
    if atomic:
        assert os.listdir(tmp_path) == [], f"{IGNITE}: DiskSaver no longer honours `_atomic`"
    else:
        assert os.listdir(tmp_path), f"{MONAI}: CheckpointSaver now saves atomically itself: drop enable_atomic_save"


def test_mlflow_run_and_client_follow_the_handler(tmp_path):
    assert mlflow_run_and_client(None) is None
    handler = MLFlowHandler(tracking_uri=f"sqlite:///{tmp_path}/mlruns.db", experiment_name="t")
    assert mlflow_run_and_client(handler) is None, f"{MONAI}: MLFlowHandler has a run before `start`"
    handler.start(Engine(lambda e, b: None))
    try:
        run, client = mlflow_run_and_client(handler)
        client.log_text(run.info.run_id, "x", "a.txt")
        assert [a.path for a in client.list_artifacts(run.info.run_id)] == ["a.txt"]
    finally:
        handler.close()
    assert mlflow_run_and_client(handler) is None, f"{MONAI}: MLFlowHandler keeps its run after `close`"


def test_epoch_metric_outputs_are_the_updates():
    metric = EpochMetric(lambda p, t: 0.0, check_compute_fn=False)
    metric.update((torch.tensor([0.1, 0.9]), torch.tensor([0, 1])))
    metric.update((torch.tensor([0.3]), torch.tensor([1])))
    predictions, targets = epoch_metric_outputs(metric)
    assert torch.cat(predictions).tolist() == pytest.approx([0.1, 0.9, 0.3]), f"{IGNITE}: EpochMetric storage moved"
    assert torch.cat(targets).tolist() == [0, 1, 1], f"{IGNITE}: EpochMetric storage moved"
    metric.reset()
    assert epoch_metric_outputs(metric) == ([], [])


def test_module_with_children_shares_weights_and_leaves_the_original():
    network = nn.Sequential()
    network.add_module("a", nn.Linear(2, 2))
    network.add_module("b", nn.Linear(2, 2))
    network.register_buffer("stat", torch.zeros(1))
    wrapped_b = nn.Sequential(network.b)
    network.b = wrapped_b
    view = module_with_children(network, {"b": wrapped_b[0]})
    assert network.b is wrapped_b and view.b is wrapped_b[0] and view.a is network.a
    assert list(view.state_dict()) == ["stat", "a.weight", "a.bias", "b.weight", "b.bias"]
    view.load_state_dict({k: torch.ones_like(v) for k, v in view.state_dict().items()})
    assert float(network.stat) == 1 and torch.equal(network.b[0].weight, torch.ones(2, 2))


def test_module_with_children_rejects_unknown_names():
    with pytest.raises(KeyError, match="no children"):
        module_with_children(nn.Sequential(nn.Linear(2, 2)), {"head": nn.Identity()})


def test_a_missing_attribute_names_the_version():
    with pytest.raises(AttributeError, match=rf"monai {monai.__version__}.*multiad_monai.upstream"):
        efficientnet_parts(nn.Linear(2, 2))


def test_exception_handler_added_to_a_serving_app_is_used():
    fastapi = pytest.importorskip("fastapi")
    from fastapi.responses import JSONResponse
    from fastapi.testclient import TestClient

    from multiad_monai.upstream import add_exception_handler_to_running_app

    app = fastapi.FastAPI()

    @app.get("/fail")
    def fail():
        raise LookupError("gone")

    client = TestClient(app, raise_server_exceptions=False)
    assert client.get("/fail").status_code == 500  # the middleware stack is built now

    async def handler(request, error):
        return JSONResponse(status_code=503, content={"detail": str(error)})

    add_exception_handler_to_running_app(app, LookupError, handler)
    answer = client.get("/fail")
    assert answer.status_code == 503 and answer.json() == {"detail": "gone"}
