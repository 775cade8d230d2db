"""The pyfunc model's input handling (the model itself is tested on a real run in tests/test_compare.py)."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from multiad_monai.mlflow_model import SIGNATURE, _paths


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
