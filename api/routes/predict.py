"""``POST /v1/jobs/{id}/predict``: a job's model applied to raw feature rows.

The rows come as JSON (``{"rows": [[...], ...]}`` in the model's feature order, or with
``"columns"`` naming each position) or as a CSV file (multipart/form-data, field ``file``,
a header row naming the features). The model runs in the API process as numpy
(``core.predictor``): its weights and preprocessing are read from the run's
``predictors.npz`` (no pickle) — a succeeded job's once per job and weights, then kept in a
bounded least-recently-used cache (``GRADQ_PREDICT_CACHE_MODELS``); a queued or running
job's from its latest ``checkpoints/{best,last}/predictors.npz`` at each request. At most
``GRADQ_PREDICT_MAX_ROWS`` rows (413 naming the field) and ``GRADQ_PREDICT_MAX_BYTES`` of
body (413) a request. Another tenant's job is a 404; a job without weights (queued or
running before its first checkpoint, failed, cancelled, pruned, or a sweep's trial whose
model was not kept) a 409 saying why.
"""

from __future__ import annotations

import json
import shutil
import tempfile
from typing import Annotated, Literal

import numpy as np
from fastapi import APIRouter, Query, Request
from starlette.concurrency import run_in_threadpool

from api import present, schemas
from api.deps import ServicesDep, TenantDep
from api.errors import ApiError
from api.predictions import csv_rows, json_rows
from api.routes.common import AUTHENTICATED, errors
from core.predictor import Predictor, PredictorError, load_predictor
from db.states import JobStatus
from db.views import JobView
from workers.tracking.read import PREDICTORS_FILE, Tracking, TrackingUnavailable

router = APIRouter(prefix="/v1/jobs", tags=["jobs"], dependencies=AUTHENTICATED)

Weights = Literal["best", "last"]

_BODY = {
    "requestBody": {
        "required": True,
        "content": {
            "application/json": {
                "schema": {
                    "type": "object",
                    "required": ["rows"],
                    "properties": {
                        "rows": {
                            "type": "array",
                            "items": {"type": "array", "items": {"type": "number"}},
                        },
                        "columns": {"type": "array", "items": {"type": "string"}},
                    },
                }
            },
            "multipart/form-data": {
                "schema": {
                    "type": "object",
                    "required": ["file"],
                    "properties": {"file": {"type": "string", "format": "binary"}},
                }
            },
        },
    }
}


def _no_model(view: JobView, weights: Weights) -> ApiError:
    if view.status in (JobStatus.QUEUED, JobStatus.RUNNING):
        why = (
            f"is {view.status.value} and has no {weights} checkpoint to predict with yet; ask "
            "again once it has one (checkpoints are taken as it trains), or once it has "
            "succeeded"
        )
    elif view.status is JobStatus.SUCCEEDED:
        why = "succeeded without a model (a sweep's trial whose model was not kept)"
    else:
        why = f"{view.status.value}: only a succeeded job has a model to predict with"
    return ApiError(409, "no_model", f"job {view.id} {why}", field="job_id")


def _source(view: JobView, weights: Weights) -> tuple[str, str]:
    """(the run's file, the weights in it): a succeeded job's model file, or the checkpoint
    folder's file of a job still in training."""
    if view.status is JobStatus.SUCCEEDED:
        return PREDICTORS_FILE, weights
    return f"checkpoints/{weights}/{PREDICTORS_FILE}", "weights"


def _load(view: JobView, weights: Weights, tracking: Tracking) -> Predictor:
    training = view.status in (JobStatus.QUEUED, JobStatus.RUNNING)
    if not (training or view.status is JobStatus.SUCCEEDED) or view.mlflow_run_id is None:
        raise _no_model(view, weights)
    path, name = _source(view, weights)
    folder = tempfile.mkdtemp(prefix="gradq-predict-")
    try:
        local = tracking.fetch_artifact(view.mlflow_run_id, path, folder)
        if local is None or not local.is_file():
            raise _no_model(view, weights)
        data = local.read_bytes()
    finally:
        shutil.rmtree(folder, ignore_errors=True)
    try:
        return load_predictor(data, name)
    except PredictorError as exc:
        raise TrackingUnavailable(f"job {view.id}'s {path}: {exc}") from None


@router.post(
    "/{job_id}/predict",
    response_model=schemas.Predictions,
    response_model_exclude_none=True,
    responses=errors(404, 409, 413, 422),
    openapi_extra=_BODY,
)
async def predict(
    job_id: str,
    request: Request,
    services: ServicesDep,
    tenant: TenantDep,
    checkpoint: Annotated[
        Weights,
        Query(
            description="best: the job's model (in training: its best checkpoint so far); "
            "last: its last epoch's weights (in training: its latest checkpoint)"
        ),
    ] = "best",
) -> schemas.Predictions:
    """Predictions of the job's model for raw feature rows: a class label (as the data
    named it) per row with the class probabilities, or a regressor's value. Rows as JSON
    (`{"rows": [[...]]}` in the model's feature order, or with `"columns"`), or a CSV file
    (multipart, field `file`) whose header names the features."""
    settings = services.settings
    media = request.headers.get("content-type", "").split(";", 1)[0].strip().lower()
    if media == "multipart/form-data":
        form = await request.form(
            max_files=1, max_fields=1, max_part_size=settings.predict_max_bytes
        )
        try:
            upload = form.get("file")
            if upload is None or isinstance(upload, str):
                raise ApiError(
                    422, "invalid", "required: a CSV file in the form field file", field="file"
                )
            raw = await upload.read()
        finally:
            await form.close()
    else:
        raw = await request.body()

    def rows(model: Predictor) -> np.ndarray:
        if media == "multipart/form-data":
            return csv_rows(raw, model, settings.predict_max_rows)
        try:
            body = json.loads(raw)
        except (ValueError, RecursionError) as exc:
            raise ApiError(400, "malformed_json", f"the body is not valid JSON: {exc}") from None
        return json_rows(body, model, settings.predict_max_rows)

    def answer() -> schemas.Predictions:
        view = services.store.get(job_id=job_id, tenant=tenant)
        if view.status is JobStatus.SUCCEEDED:  # its weights never change: kept
            model = services.predictors.get(
                (view.id, checkpoint), lambda: _load(view, checkpoint, services.tracking)
            )
        else:  # a checkpoint of a job in training: read each time, it may have a newer one
            model = _load(view, checkpoint, services.tracking)
        found = present.finite(model.predict(rows(model)))
        return schemas.Predictions(job_id=view.id, checkpoint=checkpoint, **found)

    return await run_in_threadpool(answer)  # the parsing, the model and MLflow off the loop
