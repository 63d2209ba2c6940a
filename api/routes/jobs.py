"""``/v1/jobs``: list, show, cancel, delete (submit: ``api.routes.submit``)."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Annotated

from fastapi import APIRouter, Query

from api import present, schemas
from api.deps import SettingsDep, StoreDep, TenantDep, TrackingDep
from api.errors import ApiError
from api.routes.common import AUTHENTICATED, TagQuery, errors, parsed
from api.settings import Settings
from core.spec import (
    DatasetShape,
    InvalidSpec,
    JobSpec,
    SpecLimits,
    architecture,
    check_limits,
    dataset_shape,
)
from core.uploads import recorded_shape
from db.datasets import DatasetStore
from db.errors import DatasetNotFound, InvalidTransition, JobNotFound
from db.filters import DEFAULT_SORT, parse_bound, parse_sort, parse_tag
from db.states import TERMINAL, JobStatus
from db.store import JobStore
from db.views import JobView
from workers.tracking.client import unavailable
from workers.tracking.read import Tracking, TrackingUnavailable, run_page
from workers.tracking.retention import Freed, free_run

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


MetricQuery = Annotated[
    list[str],
    Query(
        description="a threshold on a final metric, METRIC OP NUMBER with OP one of "
        "<= >= < > =, e.g. test_accuracy>=0.9; repeat for every one"
    ),
]
SORT_HELP = (
    "-created_at (newest first, the default), or a final metric: -NAME highest first, "
    "NAME lowest first (jobs without it last)"
)


def check_init_from(spec: JobSpec, store: JobStore, tenant: str) -> None:
    """A warm start's origin (``init_from.job``) must be a succeeded job of the tenant (any
    other tenant's answers as a missing one) whose run holds a checkpoint, with the same
    architecture (:func:`core.spec.architecture`); each refusal names ``init_from.job``."""
    if spec.init_from is None:
        return
    origin_id = spec.init_from.job
    try:
        origin = store.get(job_id=origin_id, tenant=tenant)
    except JobNotFound:
        raise InvalidSpec.at("init_from.job", f"no job {origin_id!r} (see GET /v1/jobs)") from None
    if origin.status is not JobStatus.SUCCEEDED or origin.mlflow_run_id is None:
        raise InvalidSpec.at(
            "init_from.job",
            f"job {origin_id} is {origin.status.value}: only a succeeded job's weights "
            "start another",
        )
    theirs, ours = architecture(JobSpec.model_validate(origin.spec)), architecture(spec)
    if theirs != ours:
        differ = ", ".join(k for k in ours if ours[k] != theirs[k])
        raise InvalidSpec.at(
            "init_from.job",
            f"job {origin_id} trains another architecture (its {differ} differ): a warm "
            "start needs the same hidden layers, loss and data set inputs",
        )


def in_utc(param: str, value: datetime | None) -> datetime | None:
    """A time of the query in UTC (without a zone: taken as UTC); one that UTC cannot hold
    (e.g. ``0001-01-01T00:00+05:00``) is a 422 naming ``param``."""
    if value is None:
        return None
    try:
        return (value if value.tzinfo else value.replace(tzinfo=UTC)).astimezone(UTC)
    except OverflowError:
        raise ApiError(422, "invalid_query", f"{param}: out of range", field=param) from None


@router.get("", response_model=schemas.JobPage, responses=errors(422))
def list_jobs(
    store: StoreDep,
    tenant: TenantDep,
    status: Annotated[JobStatus | None, Query(description="only jobs in this status")] = None,
    name: Annotated[str | None, Query(max_length=200, description="only this name")] = None,
    name_prefix: Annotated[
        str | None, Query(max_length=200, description="only names starting with this")
    ] = None,
    tag: TagQuery = [],  # noqa: B006 (FastAPI copies the default)
    created_after: Annotated[
        datetime | None, Query(description="created after this time (ISO 8601)")
    ] = None,
    created_before: Annotated[
        datetime | None, Query(description="created before this time (ISO 8601)")
    ] = None,
    metric: MetricQuery = [],  # noqa: B006
    sort: Annotated[str, Query(max_length=101, description=SORT_HELP)] = DEFAULT_SORT,
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
) -> schemas.JobPage:
    """The tenant's jobs, newest first or by a final metric, a page at a time, filtered
    (every filter must hold). Pass the same filters and sort with ``cursor``. Queue
    positions: see GET one."""
    [order] = parsed("sort", [sort], parse_sort)
    page, next_cursor = store.list(
        tenant=tenant,
        status=status,
        name=name,
        id_prefix=id_prefix,
        name_prefix=name_prefix,
        tags=parsed("tag", tag, parse_tag),
        created_after=in_utc("created_after", created_after),
        created_before=in_utc("created_before", created_before),
        bounds=parsed("metric", metric, parse_bound),
        sort=order,
        limit=limit,
        cursor=cursor,
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


@router.delete("/{job_id}", response_model=schemas.Deleted, responses=errors(404, 409, 503))
def delete_job(
    job_id: str, store: StoreDep, tracking: TrackingDep, tenant: TenantDep
) -> schemas.Deleted:
    """Delete a finished job: its MLflow run is marked deleted and its artifact bytes (run
    artifacts, logged model) are removed from the artifact store, then the job and its
    events are removed (it is no longer listed; GET answers 404). A queued or running job:
    409 (cancel it first); a sweep's trial: 409 (its sweep keeps it); MLflow away: 503 and
    nothing of the job is removed from the queue, so the same call can be made again."""
    view = store.get(job_id=job_id, tenant=tenant)
    if view.status not in TERMINAL:
        raise ApiError(409, "job_not_finished", f"job {job_id} is {view.status.value}: cancel "
                       f"it first (POST /v1/jobs/{job_id}/cancel), then delete it",
                       field="status")  # fmt: skip
    if view.spec.get("trial") is not None:
        raise ApiError(409, "job_is_a_trial", f"job {job_id} is a trial of sweep "
                       f"{view.spec['trial'].get('sweep_id')}: its sweep keeps it",
                       field="job_id")  # fmt: skip
    freed = Freed()
    if view.mlflow_run_id is not None:
        try:
            freed = free_run(tracking_uri=tracking.tracking_uri, run_id=view.mlflow_run_id,
                             apply=True, delete_run=True)  # fmt: skip
        except Exception as exc:
            if unavailable(exc):
                raise TrackingUnavailable(f"MLflow is not reachable: {exc}") from exc
            raise
    store.delete(job_id=job_id, tenant=tenant)
    return schemas.Deleted(id=job_id, mlflow_run_id=view.mlflow_run_id,
                           freed_files=freed.files, freed_bytes=freed.bytes)  # fmt: skip
