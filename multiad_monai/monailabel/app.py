"""The MONAI Label app: serves trained multiad-monai bundles, triages studies, retrains on normal studies.

Configuration (``--conf KEY VALUE`` of ``python -m monailabel.main start_server``):

- ``models``: comma-separated bundle names, e.g. ``brain`` or ``brain,mvtec`` (default ``brain``);
- ``bundles_dir``: the folder holding ``<name>/train.json``, used to retrain (default: this repository's
  ``bundles/``); inference needs only the checkpoint, which carries its recipe;
- ``<name>_ckpt_path``: the checkpoint served until a retrain run finishes (default: the bundle's
  ``outputs/model.pt``, where its training bundle writes it);
- ``runs_dir``: where retrain runs are written, ``<runs_dir>/<name>/<run>/`` (default: the app's ``model/``);
- ``device``: ``cpu``, ``cuda``, ... (default: ``cuda`` when available);
- ``infer_concurrency``: inferences run at once, the others wait (default 1);
- ``batch_size``: slices per forward pass (default 16).
"""

from __future__ import annotations

import logging
import os
from typing import Any

from fastapi import HTTPException
from monailabel.config import settings
from monailabel.interfaces.app import MONAILabelApp
from monailabel.interfaces.datastore import Datastore
from monailabel.tasks.activelearning.random import Random

import multiad_monai
from multiad_monai.monailabel.infer import AnomalyInferTask
from multiad_monai.monailabel.models import BundleModel, default_device
from multiad_monai.monailabel.pacs import PacsDatastore
from multiad_monai.monailabel.runs import TrainingBusy, die_with_parent
from multiad_monai.monailabel.train import RetrainTask
from multiad_monai.monailabel.triage import AnomalyScoring, MostAnomalous

__all__ = ["MultiADApp"]

logger = logging.getLogger(__name__)


def default_bundles_dir() -> str:
    """``bundles/`` next to the package: a source checkout or an editable install (``pip install -e``)."""
    return os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(multiad_monai.__file__))), "bundles")


class MultiADApp(MONAILabelApp):
    """Anomaly detection app: an infer task and a retrain task per bundle, scoring and a triage strategy.

    Args:
        app_dir: the app folder (MONAI Label creates ``model/``, ``logs/``, ... in it).
        studies: the studies folder, or a PACS's DICOMweb address (``http://127.0.0.1:8042/dicom-web``).
        conf: ``--conf`` pairs, see the module docstring.
    """

    def __init__(self, app_dir: str, studies: str, conf: dict[str, str]) -> None:
        names = [name.strip() for name in conf.get("models", "brain").split(",") if name.strip()]
        if not names:
            raise ValueError("--conf models needs at least one bundle name, e.g. --conf models brain")
        bundles_dir = conf.get("bundles_dir") or default_bundles_dir()
        runs_dir = conf.get("runs_dir") or os.path.join(app_dir, "model")
        device = conf.get("device") or default_device()
        self.infer_concurrency = int(conf.get("infer_concurrency", 1))
        batch_size = int(conf.get("batch_size", 16))
        self.models = {
            name: BundleModel(
                name,
                os.path.join(bundles_dir, name),
                conf.get(f"{name}_ckpt_path") or os.path.join(bundles_dir, name, "outputs", "model.pt"),
                os.path.join(runs_dir, name),
                device,
                batch_size,
            )
            for name in names
        }
        for model in self.models.values():
            logger.info(f"serving {model.name} from {model.bundle_dir}: {model.info()}")
        super().__init__(
            app_dir=app_dir,
            studies=studies,
            conf=conf,
            name="Multi-AD anomaly detection",
            description="Unsupervised anomaly maps and triage with multiad-monai bundles",
            version=multiad_monai.__version__,
        )

    @property
    def trainers(self) -> dict[str, RetrainTask]:
        return self._trainers

    def init_remote_datastore(self) -> Datastore:
        """A DICOMweb address (a PACS such as Orthanc): :class:`PacsDatastore`, offline, DICOM SEG by highdicom."""
        if settings.MONAI_LABEL_DATASTORE.lower() in ("xnat", "dsa"):
            return super().init_remote_datastore()
        logger.info(f"studies on the PACS {self.studies} (DICOMweb)")
        return PacsDatastore(self.studies)

    def init_infers(self) -> dict[str, AnomalyInferTask]:
        return {name: AnomalyInferTask(model, self.infer_concurrency) for name, model in self.models.items()}

    def init_trainers(self) -> dict[str, RetrainTask]:
        return {name: RetrainTask(model) for name, model in self.models.items()}

    def init_strategies(self) -> dict[str, Any]:
        return {"most_anomalous": MostAnomalous(list(self.models)), "random": Random()}

    def init_scoring_methods(self) -> dict[str, AnomalyScoring]:
        return {"anomaly_score": AnomalyScoring(self._infers)}

    def on_init_complete(self) -> None:
        from monailabel.app import app as server  # the running FastAPI server; only imported when serving

        from multiad_monai.monailabel import routes

        routes.install(server)
        for name, trainer in self.trainers.items():
            marked = trainer.mark_interrupted()
            if marked:
                logger.warning(f"{name}: retrain runs {marked} were interrupted; their folders are kept")
        super().on_init_complete()

    def train(self, request: dict[str, Any]) -> dict[str, Any]:
        """Run a retrain request: in MONAI Label's task subprocess a bad request ends with its message only."""
        if not self._server_mode:  # MONAI Label's task subprocess: it must not outlive the server (kill -9)
            die_with_parent()
        try:
            return super().train(request)
        except (ValueError, FileNotFoundError, TrainingBusy) as e:
            if self._server_mode:  # run_sync=true: inside a request
                raise HTTPException(400, str(e)) from e
            logger.error(f"training {request.get('model')} failed: {e}")
            raise SystemExit(f"error: {e}") from None
