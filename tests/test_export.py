"""TorchScript export: numerical round trip in a process without multiad_monai/MONAI, checkpoint checks, CLI."""

from __future__ import annotations

import contextlib
import io
import json
import os
import subprocess
import sys
import textwrap
import warnings

import pytest
import torch
from monai.networks.nets import SEResNet50

from multiad_monai.checkpoint import load_checkpoint, load_model
from multiad_monai.export import METADATA_FILE, ExportableMultiAD, export_torchscript, main
from multiad_monai.networks import MultiAD
from multiad_monai.recipe import Recipe

IMAGE_SIZE = 32
REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
OUTPUTS = ("anomaly_map", "pred_score", "normalized_score")

# Runs in `python -I`: no repository on sys.path, and importing multiad_monai or monai fails loudly.
CONSUMER = textwrap.dedent(
    """
    import json, sys
    repo, model_path, inputs_path, outputs_path = sys.argv[1:5]
    sys.path[:] = [p for p in sys.path if not p.startswith(repo)]

    class Block:
        def find_spec(self, name, path=None, target=None):
            if name.split(".")[0] in ("multiad_monai", "monai"):
                raise ImportError(f"{name} must not be needed to run the exported model")
            return None

    sys.meta_path.insert(0, Block())
    for blocked in ("multiad_monai", "monai"):  # the editable install's finder would otherwise find them
        try:
            __import__(blocked)
        except ImportError:
            pass
        else:
            raise SystemExit(f"isolation failed: {blocked} is importable")
    import torch

    extra = {"multiad.json": ""}
    model = torch.jit.load(model_path, map_location="cpu", _extra_files=extra)
    inputs = torch.load(inputs_path, weights_only=True)
    with torch.no_grad():
        outputs = {name: model(x) for name, x in inputs.items()}
    torch.save(outputs, outputs_path)
    assert not any(m.split(".")[0] in ("multiad_monai", "monai") for m in sys.modules)
    print(json.dumps(json.loads(extra["multiad.json"])))
    """
)


def _calibrated(network: MultiAD) -> MultiAD:
    network.normalizer.fit_thresholds(torch.rand(4) + 1, torch.rand(4, 1, IMAGE_SIZE, IMAGE_SIZE))
    return network


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory) -> str:
    torch.manual_seed(0)
    path = str(tmp_path_factory.mktemp("ckpt") / "model.pt")
    torch.save(_calibrated(MultiAD(Recipe.paper(image_size=IMAGE_SIZE))).state_dict(), path)
    return path


@pytest.fixture(scope="module")
def exported(checkpoint, tmp_path_factory) -> tuple[MultiAD, str]:
    """The eager network from ``load_model`` and the TorchScript file the CLI wrote from the same checkpoint.

    The CLI calls ``load_model`` and ``export_torchscript``: one trace serves both (tracing with
    ``check_trace`` takes ~10 s on 2 CPU cores). No TracerWarning may come from our own code.
    """
    network = load_model(checkpoint)
    path = str(tmp_path_factory.mktemp("export") / "deploy" / "model.ts")
    stdout = io.StringIO()
    with warnings.catch_warnings(record=True) as caught, contextlib.redirect_stdout(stdout):
        warnings.simplefilter("always")
        assert main(["--ckpt_path", checkpoint, "--output", path, "--image_size", str(IMAGE_SIZE)]) == path
    assert stdout.getvalue().strip() == path
    assert not [w for w in caught if issubclass(w.category, torch.jit.TracerWarning)]
    return network, path


@pytest.fixture(scope="module")
def consumer_run(exported, tmp_path_factory) -> tuple[dict, dict, dict]:
    """Inputs, the isolated process's outputs and the metadata it read."""
    _, model_path = exported
    folder = tmp_path_factory.mktemp("consumer")
    generator = torch.Generator().manual_seed(1)
    inputs = {f"batch{n}": torch.rand(n, 3, IMAGE_SIZE, IMAGE_SIZE, generator=generator) for n in (1, 3)}
    torch.save(inputs, folder / "inputs.pt")
    command = [sys.executable, "-I", "-c", CONSUMER, REPO_ROOT, model_path, str(folder / "inputs.pt")]
    result = subprocess.run(
        [*command, str(folder / "out.pt")],
        cwd=folder,
        capture_output=True,
        text=True,
        encoding="utf-8",
        errors="replace",
        timeout=120,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    return inputs, torch.load(folder / "out.pt", weights_only=True), json.loads(result.stdout.strip().splitlines()[-1])


@pytest.fixture(scope="module")
def eager_run(exported, consumer_run) -> dict[str, tuple[torch.Tensor, ...]]:
    """The eager network's outputs on the consumer's inputs, in the exported order."""
    network, _ = exported
    with torch.no_grad():
        results = {name: network(x) for name, x in consumer_run[0].items()}
    return {name: (r.anomaly_map, r.pred_score, network.normalize_score(r.pred_score)) for name, r in results.items()}


@pytest.mark.slow
@pytest.mark.parametrize("batch", ["batch1", "batch3"])
@pytest.mark.parametrize("index, name", list(enumerate(OUTPUTS)))
def test_torchscript_matches_eager_without_multiad_monai(consumer_run, eager_run, batch, index, name):
    scripted, eager = consumer_run[1][batch][index], eager_run[batch][index]
    assert scripted.shape == eager.shape, name
    torch.testing.assert_close(scripted, eager, atol=1e-5, rtol=0)


@pytest.mark.slow
def test_metadata_is_readable_without_multiad_monai(exported, consumer_run):
    network, _ = exported
    metadata = consumer_run[2]
    assert metadata["recipe"] == network.recipe.to_dict() and metadata["recipe"]["image_size"] == [IMAGE_SIZE] * 2
    assert metadata["layers"] == ["s1", "s2", "s4"] and metadata["normalized_threshold"] == 0.5
    for key in ("image_threshold", "score_mean", "score_std", "pixel_mean", "pixel_std"):
        expected = network.image_threshold if key == "image_threshold" else getattr(network.normalizer, key)
        assert metadata[key] == pytest.approx(float(expected))


def test_export_is_atomic_and_frozen(exported):
    _, path = exported
    assert os.listdir(os.path.dirname(path)) == ["model.ts"]  # folder created, no temporary file left
    model = torch.jit.load(path, _extra_files={METADATA_FILE: ""})
    assert not any(p.requires_grad for p in model.parameters())
    assert not any(name.startswith("discriminator") for name, _ in model.named_parameters())


def test_exportable_module_is_a_snapshot_of_the_network(exported):
    network, _ = exported
    module = ExportableMultiAD(network)
    x = torch.rand(1, 3, IMAGE_SIZE, IMAGE_SIZE)
    with torch.no_grad():
        before = module(x)
        next(network.student.parameters()).data.add_(1.0)  # later training of the network...
        after = module(x)
        next(network.student.parameters()).data.sub_(1.0)
    for a, b in zip(before, after):  # ...does not change the exported snapshot
        torch.testing.assert_close(a, b, atol=0, rtol=0)


def test_uncalibrated_network_cannot_be_exported(tmp_path):
    with pytest.raises(ValueError, match="not calibrated"):
        export_torchscript(MultiAD(Recipe.paper(image_size=IMAGE_SIZE)), str(tmp_path / "model.ts"))
    assert not os.listdir(tmp_path)


def _seresnet50_checkpoint(folder) -> str:
    weights = str(folder / "seresnet50_random.pt")
    torch.save(SEResNet50(spatial_dims=2, in_channels=3, num_classes=1000).state_dict(), weights)
    path = str(folder / "seresnet50_model.pt")
    network = MultiAD(Recipe.paper(teacher="seresnet50", image_size=IMAGE_SIZE), teacher_weights=weights)
    torch.save(_calibrated(network).state_dict(), path)
    return path


def _uncalibrated_checkpoint(folder) -> str:
    path = str(folder / "uncalibrated.pt")
    torch.save(MultiAD(Recipe.paper(image_size=IMAGE_SIZE)).state_dict(), path)
    return path


def _pickled_module_checkpoint(folder) -> str:
    path = str(folder / "pickled.pt")
    torch.save(torch.nn.Linear(2, 2), path)
    return path


def _not_a_state_dict(folder) -> str:
    path = str(folder / "list.pt")
    torch.save([torch.zeros(1)], path)
    return path


@pytest.mark.parametrize(
    "make_checkpoint, error, match",
    [
        (_seresnet50_checkpoint, ValueError, r"seresnet50_model\.pt does not fit .* from teacher 'seresnet50'"),
        (_uncalibrated_checkpoint, ValueError, r"uncalibrated\.pt is not calibrated \(score_mean, score_std"),
        (_pickled_module_checkpoint, ValueError, r"pickled\.pt cannot be read as a weights-only state dict"),
        (_not_a_state_dict, ValueError, r"list\.pt is not a MultiAD state dict"),
        (lambda folder: str(folder / "missing.pt"), FileNotFoundError, r"missing\.pt"),
    ],
)
def test_bad_checkpoints_fail_before_touching_the_network(tmp_path, make_checkpoint, error, match):
    path = make_checkpoint(tmp_path)
    network = MultiAD(Recipe.paper(image_size=IMAGE_SIZE))
    before = {k: v.clone() for k, v in network.state_dict().items() if k != "_extra_state"}
    with pytest.raises(error, match=match):
        load_checkpoint(path, network)
    after = {k: v for k, v in network.state_dict().items() if k != "_extra_state"}
    torch.testing.assert_close(after, before, atol=0, rtol=0, equal_nan=True)


def test_epoch_checkpoint_with_several_objects_is_accepted(checkpoint, tmp_path):
    state = torch.load(checkpoint, weights_only=True)
    path = str(tmp_path / "checkpoint_epoch=1.pt")
    torch.save({"network": state, "optimizer": {"state": {}, "param_groups": []}}, path)
    network = load_model(path)
    assert network.is_calibrated and torch.equal(network.normalizer.score_mean, state["normalizer.score_mean"])


def test_cli_reports_bad_checkpoints_without_writing(tmp_path, capsys):
    bad = _uncalibrated_checkpoint(tmp_path)
    with pytest.raises(SystemExit) as exit_info:
        main(["--ckpt_path", bad, "--output", str(tmp_path / "bad.ts")])
    assert exit_info.value.code == 1 and f"{bad} is not calibrated" in capsys.readouterr().err
    assert not os.path.exists(tmp_path / "bad.ts")


@pytest.mark.parametrize(
    "images, message",
    [
        (torch.rand(2, IMAGE_SIZE, IMAGE_SIZE, 3), "the channels come last, pass images.permute(0, 3, 1, 2)"),
        (torch.rand(2, 1, IMAGE_SIZE, IMAGE_SIZE), "a grey image, pass images.expand(-1, 3, -1, -1)"),
        (torch.rand(3, IMAGE_SIZE, IMAGE_SIZE), "a single image, pass images.unsqueeze(0)"),
        (torch.rand(2, 3, 64, 64), "got 64 x 64: the model was trained and calibrated at 32 x 32"),
        (torch.rand(2, 3, IMAGE_SIZE, IMAGE_SIZE) * 255, "scale the intensities as the recipe in multiad.json says"),
        ((torch.rand(2, 3, IMAGE_SIZE, IMAGE_SIZE) * 255).byte(), "got integer values"),
        (torch.full((2, 3, IMAGE_SIZE, IMAGE_SIZE), float("nan")), "got NaN or Inf values"),
    ],
)
def test_exported_model_refuses_inputs_it_was_not_trained_for(exported, images, message):
    model = torch.jit.load(exported[1])
    with pytest.raises(torch.jit.Error) as error:
        model(images)
    last = str(error.value).strip().splitlines()[-1]
    assert last.startswith("builtins.ValueError: expected float images of shape (N, 3, 32, 32)") and message in last


@pytest.mark.parametrize("output", ["a_file/model.ts", "."])
def test_cli_refuses_an_output_it_cannot_write_before_the_work(checkpoint, tmp_path, capsys, monkeypatch, output):
    (tmp_path / "a_file").write_text("not a folder")
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr("multiad_monai.export.load_model", lambda *a, **k: pytest.fail("loaded before the check"))
    with pytest.raises(SystemExit) as exit_info:
        main(["--ckpt_path", checkpoint, "--output", output])
    last = capsys.readouterr().err.strip().splitlines()[-1]
    assert exit_info.value.code == 1 and last.startswith(f"error: --output {output} ")
    assert ("a_file is a file, not a folder; pass another --output" if "/" in output else "is a folder") in last
