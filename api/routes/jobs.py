"""``/v1/jobs``: list, show, cancel (submit: ``api.routes.submit``)."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Query

from api import present, schemas
from api.deps import SettingsDep, StoreDep, TenantDep, TrackingDep
from api.routes.common import AUTHENTICATED, errors
from api.settings import Settings
from core.spec import (
    DatasetShape,
    InvalidSpec,
    JobSpec,
    SpecLimits,
    check_limits,
    dataset_shape,
)
from core.uploads import recorded_shape
from db.datasets import DatasetStore
from db.errors import DatasetNotFound, InvalidTransition
from db.states import JobStatus
from db.store import JobStore
from db.views import JobView
from workers.tracking.read import Tracking, run_page

router = APIRouter(prefix="/v1/jobs", tags=["jobs"], dependencies=AUTHENTICATED)


def detailed(view: JobView, store: JobStore, tracking: Tracking, settings: Settings) -> schemas.Job:
    """A job with its queue position, why it waits, and its MLflow link (:func:`run_link`,
    only where :func:`shows_mlflow`)."""
    position = reason = None
    if view.status is JobStatus.QUEUED:
        position = store.queue_position(job_id=view.id)
        reason = view.pending_reason or waiting_reason(position)
    link = run_link(view, tracking, settings.mlflow_ui_url) if shows_mlflow(settings) else None
    return present.job(view, queue_position=position, pending_reason=reason, mlflow_link=link)


def shows_mlflow(settings: Settings) -> bool:
    """Whether a job's view links its run in the MLflow UI: not with ``GRADQ_AUTH=keys``,
    where callers are tenants and MLflow is an operator tool (a tenant reads its runs through
    gradq's ``metrics`` and ``artifacts`` routes); without keys, as always."""
    return settings.auth != "keys"


def run_link(view: JobView, tracking: Tracking, ui_url: str) -> str | None:
    """The job's run in the MLflow UI (``GRADQ_MLFLOW_UI_URL``, ``ui_url``), None before it
    has a run.

    Built from the run and experiment ids its attempt stored: no call to MLflow, so a plain
    ``GET /v1/jobs/{id}`` neither waits for nor loads the tracking server. A job whose run
    was stored before migration 0004 has no experiment id: its link is then found as it
    always was, by asking MLflow which experiment the run is in (once per run and API
    process; None while MLflow does not answer) — a user keeps the link such a job had.
    Blocking in that case only (:func:`needs_mlflow`): async callers run it in a thread."""
    if view.mlflow_run_id is None:
        return None
    if view.mlflow_experiment_id is None:
        return tracking.run_link(view.mlflow_run_id)
    return run_page(
        ui_base=ui_url, experiment_id=view.mlflow_experiment_id, run_id=view.mlflow_run_id
    )


def needs_mlflow(view: JobView) -> bool:
    """Whether :func:`run_link` asks MLflow for this job (a run stored before 0004)."""
    return view.mlflow_run_id is not None and view.mlflow_experiment_id is None


def waiting_reason(ahead: int | None) -> str | None:
    """Why a queued job waits when the dispatcher has not said (as ``store.pending_reason``,
    without reading the job again)."""
    if ahead is None:
        return None
    if ahead:
        return f"{ahead} job{'s' if ahead != 1 else ''} ahead in the queue"
    return "waiting for a free worker"


def check_upload(
    spec: JobSpec, datasets: DatasetStore, tenant: str, limits: SpecLimits | None = None
) -> DatasetShape | None:
    """An ``upload`` data set must be one of the tenant's and have the target column. The
    spec is then checked against the upload's shape (``core.uploads.upload_shape``: the
    target's task and classes, the features and rows recorded at upload): its loss, and,
    with ``limits``, the parameter and memory limits. Returns that shape (None: not an
    upload, or one recorded before shapes were, whose limits are checked on the shape
    ``core.memory`` assumes for files)."""
    if spec.dataset.name != "upload" or spec.dataset.id is None:
        return None
    try:
        found = datasets.get(dataset_id=spec.dataset.id, tenant=tenant)
    except DatasetNotFound:
        raise InvalidSpec.at(
            "dataset.id", f"no uploaded data set {spec.dataset.id!r} (see GET /v1/datasets)"
        ) from None
    if spec.dataset.target not in found.columns:
        raise InvalidSpec.at(
            "dataset.target",
            f"{spec.dataset.target!r} is not a column of data set {found.id}: "
            f"{', '.join(found.columns)}",
        )
    shape = recorded_shape(
        spec.dataset, columns=found.columns, rows=found.rows, profile=found.profile
    )
    if shape is not None:
        errors = spec.loss_errors(shape)
        if errors:
            raise InvalidSpec(errors)
    if limits is not None:
        check_limits(spec, limits, shape or dataset_shape(spec.dataset))
    return shape


@router.get("", response_model=schemas.JobPage, responses=errors(422))
def list_jobs(
    store: StoreDep,
    tenant: TenantDep,
    status: Annotated[JobStatus | None, Query(description="only jobs in this status")] = None,
    name: Annotated[str | None, Query(max_length=200, description="only this name")] = None,
    limit: Annotated[int, Query(ge=1, le=200)] = 50,
    cursor: Annotated[str | None, Query(max_length=500, description="from next_cursor")] = None,
    id_prefix: Annotated[
        str | None,
        Query(
            max_length=36,
            pattern=r"^[0-9a-fA-F-]+$",
            description="only jobs whose id starts with this (a short id, as `gradq show` takes)",
        ),
    ] = None,
    name_prefix: Annotated[
        str | None, Query(max_length=200, description="only names that start with this")
    ] = None,
) -> schemas.JobPage:
    """The tenant's jobs, newest first, a page at a time (queue positions: see GET one)."""
    page, next_cursor = store.list(
        tenant=tenant,
        status=status,
        name=name,
        limit=limit,
        cursor=cursor,
        id_prefix=id_prefix,
        name_prefix=name_prefix,
    )
    return schemas.JobPage(items=[present.job(v) for v in page], next_cursor=next_cursor)


@router.get("/{job_id}", response_model=schemas.Job, responses=errors(404, 422))
def get_job(
    job_id: str, store: StoreDep, tracking: TrackingDep, settings: SettingsDep, tenant: TenantDep
) -> schemas.Job:
    """Status, attempt, queue position and why it waits, progress, result or error, and
    where it is in MLflow (run id, UI link, checkpoint)."""
    view = store.get(job_id=job_id, tenant=tenant)
    return detailed(view, store, tracking, settings)


@router.post(
    "/{job_id}/cancel", status_code=202, response_model=schemas.Job, responses=errors(404, 409)
)
def cancel(
    job_id: str, store: StoreDep, tracking: TrackingDep, settings: SettingsDep, tenant: TenantDep
) -> schemas.Job:
    """Cancel: a queued job at once, a running one between two steps. Idempotent; a job
    that succeeded or failed: 409."""
    try:
        view = store.request_cancel(job_id=job_id, tenant=tenant)
    except InvalidTransition as exc:
        if exc.from_status != JobStatus.CANCELLED.value:
            raise
        view = store.get(job_id=job_id, tenant=tenant)
    return detailed(view, store, tracking, settings)
