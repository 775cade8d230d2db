"""Request checks in front of MONAI Label's own endpoints: a bad request gets a 4xx and a message.

MONAI Label 0.8.5 answers an unknown model, an unknown image id or an unreadable volume with HTTP 500 and
plain text (an unknown image id even reaches the model as an empty path), and starts train and scoring
subprocesses for models or methods that do not exist. :func:`install` puts routes with the same paths and
parameters before MONAI Label's: each checks the request, then calls MONAI Label's own endpoint function.

``/infer`` is also served from FastAPI's thread pool instead of the event loop, so the server keeps
answering other requests while an inference runs (at most ``infer_concurrency`` run at once).
"""

from __future__ import annotations

import json
import logging
from typing import Any, Protocol

from fastapi import APIRouter, BackgroundTasks, Depends, FastAPI, File, Form, HTTPException, Request, UploadFile
from fastapi.responses import JSONResponse
from monailabel.config import settings
from monailabel.endpoints import activelearning, scoring, train
from monailabel.endpoints import infer as infer_endpoint
from monailabel.endpoints.infer import ResultType
from monailabel.endpoints.user.auth import RBAC, User
from monailabel.interfaces.utils.app import app_instance

from multiad_monai.monailabel.infer import UPLOAD_NAME, InputError, check_infer_params
from multiad_monai.monailabel.pacs import PacsUnavailable
from multiad_monai.monailabel.runs import TrainingBusy, TrainingLock
from multiad_monai.monailabel.studies import TooFewStudies
from multiad_monai.monailabel.train import interrupted_tasks
from multiad_monai.upstream import add_exception_handler_to_running_app

__all__ = ["install"]

logger = logging.getLogger(__name__)


class ServedApp(Protocol):
    """What the routes use of the running app (:class:`multiad_monai.monailabel.app.MultiADApp`, which installs
    them: the routes do not import the app)."""

    models: dict[str, Any]
    trainers: dict[str, Any]

    def datastore(self) -> Any: ...

    def info(self) -> dict[str, Any]: ...


def _known(kind: str, name: str, known: list[str]) -> None:
    if name not in known:
        raise HTTPException(404, f"unknown {kind} {name!r}; available: {sorted(known)}")


def _first_line(error: BaseException) -> str:
    lines = str(error).strip().splitlines()
    return lines[0] if lines else type(error).__name__


def _json_object(text: str | None, what: str) -> dict[str, Any]:
    try:
        value = json.loads(text) if text else {}
    except json.JSONDecodeError as e:
        raise HTTPException(400, f"{what} is not valid JSON ({e}): {text[:200]!r}") from e
    if not isinstance(value, dict):
        raise HTTPException(400, f"{what} must be a JSON object, got {text[:200]!r}")
    return value


def run_inference(
    background_tasks: BackgroundTasks,
    model: str,
    image: str = "",
    session_id: str = "",
    params: str = Form("{}"),
    file: UploadFile = File(None),
    label: UploadFile = File(None),
    output: ResultType | None = None,
    user: User = Depends(RBAC(settings.MONAI_LABEL_AUTH_ROLE_USER)),
):
    app: ServedApp = app_instance()
    _known("model", model, list(app.models))
    if not file and not image and not session_id:
        raise HTTPException(400, "give an image id (?image=ID), an uploaded file (form field 'file') or a session_id")
    if image and not file and not session_id and not app.datastore().get_image_uri(image):
        raise HTTPException(404, f"image {image!r} is not in the datastore (GET /datastore/?output=all lists the ids)")
    try:
        check_infer_params(_json_object(params, "params"))
    except ValueError as e:
        raise HTTPException(400, str(e)) from e
    if file and file.filename:  # errors name the upload as sent, not MONAI Label's temporary copy
        params = json.dumps({**_json_object(params, "params"), UPLOAD_NAME: file.filename})
    try:
        return infer_endpoint.run_inference(background_tasks, model, image, session_id, params, file, label, output)
    except InputError as e:
        raise HTTPException(422, str(e)) from e
    except PacsUnavailable:
        raise
    except FileNotFoundError as e:  # the model has no checkpoint yet
        raise HTTPException(409, str(e)) from e
    except ValueError as e:  # the checkpoint does not load
        raise HTTPException(500, f"model {model!r} cannot be loaded: {_first_line(e)}") from e
    except HTTPException:
        raise
    except Exception as e:
        logger.exception(f"inference with {model} failed")
        raise HTTPException(500, f"inference failed: {type(e).__name__}: {_first_line(e)}") from e


async def run_training(
    model: str,
    params: dict | None = None,
    run_sync: bool | None = False,
    enqueue: bool | None = False,
    user: User = Depends(RBAC(settings.MONAI_LABEL_AUTH_ROLE_ADMIN)),
):
    app: ServedApp = app_instance()
    _known("model", model, list(app.trainers))
    try:
        app.trainers[model].check(params or {}, app.datastore())
        TrainingLock(app.trainers[model].model.runs_dir, model).check_free()
    except (TooFewStudies, TrainingBusy) as e:
        raise HTTPException(409, str(e)) from e
    except ValueError as e:
        raise HTTPException(400, str(e)) from e
    return train.run_model(model, params, run_sync, enqueue)


async def run_all_training(
    params: dict | None = None,
    run_sync: bool | None = False,
    user: User = Depends(RBAC(settings.MONAI_LABEL_AUTH_ROLE_ADMIN)),
):
    """MONAI Label's ``POST /train/`` (every model, ``{"<model>": {...}}``), with the checks of ``/train/<model>``."""
    app: ServedApp = app_instance()
    for model, request in (params or {}).items():
        _known("model", model, list(app.trainers))
        if not isinstance(request, dict):
            raise HTTPException(400, f"params.{model} must be a JSON object of train parameters, got {request!r}")
    for model in app.trainers:  # MONAI Label trains every model, each with its params or none
        try:
            app.trainers[model].check((params or {}).get(model) or {}, app.datastore())
            TrainingLock(app.trainers[model].model.runs_dir, model).check_free()
        except (TooFewStudies, TrainingBusy) as e:
            raise HTTPException(409, str(e)) from e
        except ValueError as e:
            raise HTTPException(400, f"{model}: {e}") from e
    return train.run(params, run_sync)


async def training_status(
    all: bool = False,
    check_if_running: bool = False,
    user: User = Depends(RBAC(settings.MONAI_LABEL_AUTH_ROLE_USER)),
):
    """MONAI Label's ``GET /train/``; after a restart, the runs a dead server left are reported (interrupted)."""
    try:
        return train.status(all, check_if_running)
    except HTTPException as e:
        runs = [] if check_if_running else interrupted_tasks(app_instance().trainers)
        if e.status_code != 404 or not runs:
            raise
        return runs if all else runs[-1]


async def run_scoring(
    method: str,
    params: dict | None = None,
    run_sync: bool | None = False,
    user: User = Depends(RBAC(settings.MONAI_LABEL_AUTH_ROLE_ANNOTATOR)),
):
    _known("scoring method", method, list(app_instance().info()["scoring"]))
    return scoring.run_method(method, params, run_sync)


async def next_sample(
    strategy: str,
    params: dict | None = None,
    user: User = Depends(RBAC(settings.MONAI_LABEL_AUTH_ROLE_USER)),
):
    app: ServedApp = app_instance()
    _known("strategy", strategy, list(app.info()["strategies"]))
    model = (params or {}).get("model")
    if model is not None:
        _known("model", model, list(app.models))
    return activelearning.sample(strategy, params, user.username)


async def _pacs_unavailable(request: Request, error: PacsUnavailable) -> JSONResponse:
    """Any endpoint that reaches a PACS that does not answer: 503, the server stays up, nothing is lost."""
    logger.warning(f"{request.method} {request.url.path}: {error}")
    return JSONResponse(status_code=503, content={"detail": str(error)}, headers={"Retry-After": "30"})


def install(server: FastAPI) -> None:
    """Serve the checked routes before MONAI Label's routes of the same paths (FastAPI matches in order)."""
    router = APIRouter(prefix=settings.MONAI_LABEL_API_STR)
    router.add_api_route("/infer/{model}", run_inference, methods=["POST"], summary="Run inference (checked)")
    router.add_api_route("/train/", training_status, methods=["GET"], summary="Training status (and interrupted runs)")
    router.add_api_route("/train/", run_all_training, methods=["POST"], summary="Retrain every model (checked)")
    router.add_api_route("/train/{model}", run_training, methods=["POST"], summary="Retrain a model (checked)")
    router.add_api_route("/scoring/{method}", run_scoring, methods=["POST"], summary="Run scoring (checked)")
    router.add_api_route("/activelearning/{strategy}", next_sample, methods=["POST"], summary="Next study (checked)")
    server.router.routes[0:0] = router.routes
    add_exception_handler_to_running_app(server, PacsUnavailable, _pacs_unavailable)
    logger.info("request checks installed before /infer, /train, /scoring and /activelearning")
