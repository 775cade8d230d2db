"""The pyfunc model's input handling (the model itself is tested on a real run in tests/compare/test_report.py)."""

from __future__ import annotations

import mlflow
import numpy as np
import pandas as pd
import pytest
import torch
from PIL import Image

from multiad_monai.mlflow_model import SIGNATURE, MultiADPyfunc, _paths
from multiad_monai.networks import MultiAD
from multiad_monai.recipe import Recipe


@pytest.mark.parametrize(
    "model_input, expected",
    [
        (pd.DataFrame({"image": ["a.png", "b.png"]}), ["a.png", "b.png"]),
        (pd.DataFrame({"path": ["a.png"]}), ["a.png"]),  # a single column, whatever its name
        (pd.DataFrame({"image": [["a.png", "b.png"]]}), ["a.png", "b.png"]),  # MLflow's form of {"image": [...]}
        ({"image": ["a.png"]}, ["a.png"]),
        ({"image": "a.png"}, ["a.png"]),
        (["a.png", "b.png"], ["a.png", "b.png"]),
        (np.array(["a.png"]), ["a.png"]),
        ("a.png", ["a.png"]),
    ],
)
def test_paths(model_input, expected):
    assert _paths(model_input) == expected


@pytest.mark.parametrize(
    "model_input, error",
    [
        (pd.DataFrame({"a": ["x"], "b": ["y"]}), ValueError),
        ({"images": ["a.png"]}, ValueError),
        (3, TypeError),
    ],
)
def test_bad_inputs_name_the_expected_form(model_input, error):
    with pytest.raises(error, match="image"):
        _paths(model_input)


def test_signature_declares_paths_in_scores_out():
    assert SIGNATURE.inputs.input_names() == ["image"]
    assert SIGNATURE.outputs.input_names()[:4] == ["image", "score", "normalized_score", "is_anomalous"]
    assert {p.name: p.default for p in SIGNATURE.params.params} == {
        "return_maps": False,
        "threshold": 0.5,
        "batch_size": 16,
    }


@pytest.fixture(scope="module")
def pyfunc_model(tmp_path_factory):
    """The pyfunc model saved and loaded by MLflow, around a calibrated 32 px checkpoint."""
    root = tmp_path_factory.mktemp("pyfunc")
    torch.manual_seed(0)
    network = MultiAD(Recipe.paper(image_size=32))
    network.normalizer.fit_thresholds(torch.rand(4) + 1, torch.rand(4, 1, 32, 32))
    torch.save(network.state_dict(), root / "model.pt")
    mlflow.pyfunc.save_model(
        str(root / "model"), python_model=MultiADPyfunc(), artifacts={"checkpoint": str(root / "model.pt")},
        signature=SIGNATURE, pip_requirements=[],
    )  # fmt: skip
    image = str(root / "image.png")
    Image.fromarray(np.random.default_rng(0).integers(0, 255, (40, 40), dtype=np.uint8)).save(image)
    return mlflow.pyfunc.load_model(str(root / "model")), image, root


@pytest.mark.parametrize("threshold", [1.5, -0.1, float("nan")])
def test_pyfunc_refuses_a_threshold_outside_0_1_as_monai_label_does(pyfunc_model, threshold):
    model, image, _ = pyfunc_model
    assert model.predict({"image": [image]})["is_anomalous"].dtype == bool  # a good request works
    with pytest.raises(ValueError, match=r"params.threshold must be a number in \[0, 1\] .*0.5 is the calibrated"):
        model.predict({"image": [image]}, params={"threshold": threshold})


def test_pyfunc_names_an_empty_file(pyfunc_model):
    model, image, root = pyfunc_model
    empty = root / "empty.png"
    empty.write_bytes(b"")
    with pytest.raises(ValueError, match=f"{empty} is empty \\(0 bytes\\)"):
        model.predict({"image": [image, str(empty)]})
