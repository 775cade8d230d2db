"""A trained Multi-AD model as an MLflow ``pyfunc`` model: image paths in, scores out, no bundle configs needed.

The model folder holds the calibrated checkpoint, which carries its recipe (network and preprocessing), as its
artifact; :func:`multiad_monai.inference.load_inferer` turns it back into an inferer::

    model = mlflow.pyfunc.load_model("runs:/<run_id>/model")  # or "models:/<name>/<version>"
    scores = model.predict(pd.DataFrame({"image": ["a.png", "b.png"]}))  # columns: image, score,
    # normalized_score (0.5 = the calibrated threshold), is_anomalous
    maps = model.predict({"image": ["a.png"]}, params={"return_maps": True})["anomaly_map"]  # (H, W) each

Inputs are 2D image files or 3D volumes (slice-wise, as the inference bundle); a volume's score is its
most anomalous slice's. A DICOM series folder, study folder or multi-frame file gives one row per series, with
its ``series_uid``.
"""

from __future__ import annotations

import os
import tempfile
import warnings
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from typing import Any

import mlflow
import numpy as np
import pandas as pd
import torch
from mlflow.models import ModelSignature
from mlflow.types import ColSpec, ParamSchema, ParamSpec, Schema
from mlflow.types.schema import Array

from multiad_monai import __version__
from multiad_monai.checkpoint import read_recipe
from multiad_monai.data.layouts import VOLUME_EXTENSIONS
from multiad_monai.inference import Input, input_source, list_inputs, load_inferer
from multiad_monai.transforms.dicom import is_dicom_input

__all__ = ["MultiADPyfunc", "load_inferer", "log_pyfunc_model", "SIGNATURE", "ARTIFACT_PATH"]

ARTIFACT_PATH = "model"

SIGNATURE = ModelSignature(
    inputs=Schema([ColSpec("string", "image")]),
    outputs=Schema(
        [
            ColSpec("string", "image"),
            ColSpec("double", "score"),
            ColSpec("double", "normalized_score"),
            ColSpec("boolean", "is_anomalous"),
            ColSpec("string", "series_uid", required=False),
            ColSpec(Array(Array("double")), "anomaly_map", required=False),
        ]
    ),
    params=ParamSchema(
        [
            ParamSpec("return_maps", "boolean", False),
            ParamSpec("threshold", "double", 0.5),
            ParamSpec("batch_size", "long", 16),
        ]
    ),
)

# models-from-code: MLflow copies this file into the model folder and runs it on load (nothing is pickled)
_ENTRY_POINT = """from mlflow.models import set_model
from multiad_monai.mlflow_model import MultiADPyfunc

set_model(MultiADPyfunc())
"""


def _paths(model_input: Any) -> list[str]:
    """Image paths from a DataFrame with an ``image`` column (or its only column), a dict, list or string.

    MLflow turns ``{"image": [a, b]}`` into one row holding the list: list cells are flattened.
    """
    if isinstance(model_input, pd.DataFrame):
        if "image" not in model_input.columns and len(model_input.columns) != 1:
            raise ValueError(f"expected a DataFrame with an 'image' column of file paths, got {list(model_input)}")
        model_input = (model_input["image"] if "image" in model_input.columns else model_input.iloc[:, 0]).tolist()
    elif isinstance(model_input, Mapping):
        if "image" not in model_input:
            raise ValueError(f"expected {{'image': paths}}, got keys {list(model_input)}")
        model_input = model_input["image"]
    if isinstance(model_input, (str, os.PathLike)):
        return [os.fspath(model_input)]
    if isinstance(model_input, (Sequence, np.ndarray, pd.Series)):
        return [path for item in model_input for path in _paths(item)]
    raise TypeError(
        f"expected image paths (DataFrame 'image' column, dict, list or str), got {type(model_input).__name__}"
    )


class MultiADPyfunc(mlflow.pyfunc.PythonModel):
    """MLflow ``pyfunc`` wrapper of a calibrated :class:`MultiAD`, built by :func:`load_inferer` on load."""

    def load_context(self, context: mlflow.pyfunc.PythonModelContext) -> None:
        """Build the inferer; ``mlflow.pyfunc.load_model(uri, model_config={"device": "cuda"})`` picks the device."""
        device = (context.model_config or {}).get("device", "cpu")
        self.inferer = load_inferer(context.artifacts["checkpoint"], device=device)

    def predict(self, context, model_input: pd.DataFrame, params: dict[str, Any] | None = None) -> pd.DataFrame:
        """Score image files.

        Args:
            model_input: file paths (see :func:`_paths`); 2D images and 3D volumes.
            params: ``return_maps`` (add the raw ``anomaly_map`` per input, ``(H, W)`` or the volume's shape),
                ``threshold`` on the normalised score (default 0.5, the calibrated threshold), ``batch_size``.

        Returns:
            one row per input: ``image``, ``score`` (raw), ``normalized_score`` in ``[0, 1]``, ``is_anomalous``.
        """
        params = {**{spec.name: spec.default for spec in SIGNATURE.params.params}, **(params or {})}
        threshold = params["threshold"]
        if not isinstance(threshold, (int, float)) or not 0.0 <= float(threshold) <= 1.0:  # NaN fails too
            raise ValueError(
                f"params.threshold must be a number in [0, 1] on the normalised score (0.5 is the calibrated "
                f"threshold), got {threshold!r}"
            )
        if int(params["batch_size"]) < 1:
            raise ValueError(f"params.batch_size must be >= 1, got {params['batch_size']!r}")
        paths = _paths(model_input)
        missing = [p for p in paths if not os.path.exists(p)]
        if missing:
            raise FileNotFoundError(f"input images not found: {missing[:3]}{' ...' if len(missing) > 3 else ''}")
        empty = [p for p in paths if os.path.isfile(p) and os.path.getsize(p) == 0]
        if empty:
            raise ValueError(f"{empty[0]} is empty (0 bytes): it was not fully written or copied; pass the image again")
        # a DICOM series folder, study folder or multi-frame file gives one input per series
        inputs = [item for p in paths for item in (list_inputs(p) if is_dicom_input(p) else [p])]
        inferer = self.inferer
        inferer.batch_size = int(params["batch_size"])
        results: dict[Input, tuple[float, np.ndarray]] = {}
        images = [p for p in inputs if isinstance(p, str) and not p.lower().endswith(VOLUME_EXTENSIONS)]
        for path, _, anomaly_map, score in inferer.predict_images(images) if images else []:
            results[path] = (score, anomaly_map)
        for item in (p for p in inputs if p not in images):
            prediction = inferer.predict_volume(item)
            results[item] = (float(prediction.slice_scores.max()), prediction.anomaly_map)
        network = inferer.network
        scores = np.array([results[p][0] for p in inputs], dtype=np.float64)
        normalized = network.normalize_score(torch.as_tensor(scores)).cpu().numpy()
        output = pd.DataFrame(
            {
                "image": [input_source(p) for p in inputs],
                "score": scores,
                "normalized_score": normalized.astype(np.float64),
                "is_anomalous": normalized > float(params["threshold"]),
                "series_uid": ["" if isinstance(p, str) else p.uid for p in inputs],
            }
        )
        if params["return_maps"]:
            output["anomaly_map"] = [results[p][1].astype(np.float64).tolist() for p in inputs]
        return output


def log_pyfunc_model(
    tracking_uri: str,
    run_id: str,
    ckpt_path: str,
    registered_model_name: str | None = None,
    metrics: Mapping[str, float] | None = None,
) -> mlflow.models.model.ModelInfo:
    """Log ``ckpt_path`` as the ``model`` pyfunc of run ``run_id``, and register it when a name is given.

    The run's metrics are linked to the logged model by MLflow; when registered, the ``metrics`` are also
    set as tags of the new model version and summarised in its description, so the registry shows them.

    Args:
        tracking_uri: the store of the run (the bundle's ``tracking_uri``).
        run_id: the training run; it is left FINISHED.
        ckpt_path: the calibrated checkpoint (recipe inside), copied into the model.
        registered_model_name: Model Registry name (``--register_model NAME``), or None.
        metrics: final metrics of the run, for the registered version.
    """
    # the recipe goes to the MLmodel file (metadata), not to model_config, which MLflow would also log as run params
    metadata = {"recipe": read_recipe(ckpt_path).to_dict(), "multiad_monai_version": __version__}
    with _fluent_tracking_uri(tracking_uri):
        with tempfile.TemporaryDirectory() as tmp, mlflow.start_run(run_id=run_id):
            entry = os.path.join(tmp, "multiad_pyfunc.py")
            with open(entry, "w", encoding="utf-8") as f:
                f.write(_ENTRY_POINT)
            with warnings.catch_warnings():  # no input example: inputs are file paths on the caller's machine
                warnings.filterwarnings("ignore", message=".*input[ _]example.*", category=UserWarning)
                info = mlflow.pyfunc.log_model(
                    name=ARTIFACT_PATH,
                    python_model=entry,
                    artifacts={"checkpoint": os.path.abspath(ckpt_path)},
                    signature=SIGNATURE,
                    metadata=metadata,
                    pip_requirements=[f"multiad-monai=={__version__}", f"torch=={torch.__version__.split('+')[0]}"],
                    registered_model_name=registered_model_name,
                )
        if registered_model_name and info.registered_model_version is not None:
            client = mlflow.MlflowClient(tracking_uri)
            version = str(info.registered_model_version)
            for key, value in (metrics or {}).items():
                client.set_model_version_tag(registered_model_name, version, key, f"{value:.6g}")
            summary = ", ".join(f"{k} {v:.4f}" for k, v in (metrics or {}).items())
            client.update_model_version(
                registered_model_name, version, description=f"run {run_id}" + (f": {summary}" if summary else "")
            )
    return info


@contextmanager
def _fluent_tracking_uri(uri: str) -> Iterator[None]:
    """Point MLflow's fluent API at ``uri`` for a while, then restore it and ``MLFLOW_TRACKING_URI``.

    ``mlflow.set_tracking_uri`` also sets the environment variable, which ``monai.handlers.MLFlowHandler``
    prefers over its own ``tracking_uri``: left set, it would send later runs of this process to ``uri``.
    """
    previous = mlflow.get_tracking_uri() if mlflow.is_tracking_uri_set() else None
    environment = os.environ.get("MLFLOW_TRACKING_URI")
    mlflow.set_tracking_uri(uri)
    try:
        yield
    finally:
        mlflow.set_tracking_uri(previous)
        if environment is None:
            os.environ.pop("MLFLOW_TRACKING_URI", None)
        else:
            os.environ["MLFLOW_TRACKING_URI"] = environment
