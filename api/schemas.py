"""HTTP schemas: what the API answers, apart from the ORM and the store's views.

The request body of a job is :class:`core.spec.JobSpec` itself (the one contract); it is
parsed by the routes with ``core.spec.parse_spec`` so that errors carry core's field paths.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from db.states import JobStatus


class ErrorDetail(BaseModel):
    code: str = Field(description="stable, machine-readable: not_found, invalid_spec, …")
    message: str
    field: str | None = Field(description="the field path at fault, e.g. model.hidden[1]")


class FieldProblem(BaseModel):
    field: str
    message: str


class ErrorBody(BaseModel):
    """Every error: one problem in ``error``, and for a bad spec each problem in ``errors``."""

    error: ErrorDetail
    errors: list[FieldProblem] | None = None


class Progress(BaseModel):
    model_config = ConfigDict(extra="allow")

    epoch: int = 0
    epochs: int | None = None
    step: int = 0
    metrics: dict[str, float | None] = Field(default_factory=dict)
    engine: str | None = None
    device: str | None = None
    node: str | None = None


class JobLinks(BaseModel):
    self: str
    events: str
    metrics: str
    cancel: str
    artifacts: str = Field(description="the run's files: checkpoints, reports, curve, model")
    mlflow_run: str | None = Field(
        None,
        description="the run in the MLflow UI, once known; always null with GRADQ_AUTH=keys "
        "(MLflow is an operator tool: tenants read their runs through `metrics` and "
        "`artifacts`)",
    )


class Job(BaseModel):
    id: str
    name: str
    tenant: str
    status: JobStatus
    attempt: int
    max_attempts: int
    retries: int = Field(0, description="retries after a transient failure (spec.retry)")
    priority: int
    cancel_requested: bool
    queue_position: int | None = Field(None, description="queued jobs a claim takes first")
    pending_reason: str | None = Field(None, description="why a queued job waits")
    progress: Progress | None
    result: dict[str, Any] | None = Field(description="final metrics, best epoch, …")
    error: Any = Field(description="type and message of a failure")
    mlflow_run_id: str | None
    checkpoint_uri: str | None
    node: str | None
    created_at: datetime
    started_at: datetime | None
    finished_at: datetime | None
    updated_at: datetime
    spec: dict[str, Any]
    tags: dict[str, str] = Field(default_factory=dict, description="the spec's tags")
    origin_job_id: str | None = Field(None, description="a rerun's: the job it was made from")
    links: JobLinks


class Deleted(BaseModel):
    id: str
    mlflow_run_id: str | None = Field(description="the job's MLflow run, now deleted")
    freed_files: int = Field(description="files removed from the artifact store")
    freed_bytes: int = Field(description="their bytes")


class JobPage(BaseModel):
    items: list[Job]
    next_cursor: str | None = Field(description="pass as ?cursor= for the next page")


class Event(BaseModel):
    id: int
    at: datetime
    from_status: JobStatus | None
    to_status: JobStatus
    attempt: int
    reason: str | None


class Point(BaseModel):
    step: int
    value: float | None


class Metrics(BaseModel):
    job_id: str
    mlflow_run_id: str | None
    metrics: dict[str, list[Point]] = Field(description="per metric, its curve by step")


class ArtifactFile(BaseModel):
    path: str = Field(
        description="the file's path in the job's run, e.g. `plots/learning_curve.png`"
    )
    size: int | None = Field(description="bytes, where the artifact store says")
    url: str = Field(description="GET it here (under the same key)")


class Artifacts(BaseModel):
    job_id: str
    artifacts: list[ArtifactFile] = Field(description="every file of the job's run, by path")


class Predictions(BaseModel):
    job_id: str
    checkpoint: Literal["best", "last"] = Field(description="the weights that answered")
    predictions: list[str | float | None] = Field(
        description="one per row: a class label as the data named it, or a regressor's value"
    )
    probabilities: list[list[float | None]] | None = Field(
        None, description="a classifier's: one list per row, in the order of `classes`"
    )
    classes: list[str] | None = Field(None, description="a classifier's labels")


class Dataset(BaseModel):
    id: str
    name: str
    sha256: str
    size: int
    rows: int
    columns: list[str]
    target: str | None
    uri: str = Field(description="where workers read the bytes (an MLflow artifact)")
    created_at: datetime


class DatasetList(BaseModel):
    items: list[Dataset]


class TensorCheck(BaseModel):
    name: str
    shape: list[int]
    autograd_max_abs: float | None
    autograd_rel: float | None
    fd_max_abs: float | None
    fd_rel: float | None
    fd_coordinates: int
    passed: bool


class GradcheckReport(BaseModel):
    passed: bool
    step: int
    batch: int
    tolerance: float
    fd_tolerance: float
    max_rel_error: float | None
    max_fd_rel_error: float | None
    parameters: int
    tensors: list[TensorCheck]


class Health(BaseModel):
    status: str


class Check(BaseModel):
    ok: bool
    detail: str


class Readiness(BaseModel):
    status: str = Field(description="ready or unavailable")
    checks: dict[str, Check] = Field(description="database, ray, mlflow")


# --- sweeps ----------------------------------------------------------------------------------


class SweepBest(BaseModel):
    job_id: str
    trial: int
    params: dict[str, Any]
    objective: float
    mlflow_run_id: str | None = None


class SweepHistoryPoint(BaseModel):
    """A trial that ended with an objective, in the order trials ended; ``best``: the best
    objective of the sweep's succeeded trials so far."""

    trial: int
    job_id: str
    status: str
    objective: float
    best: float | None


class Sweep(BaseModel):
    id: str
    name: str
    status: str = Field(description="queued, running, succeeded, failed or cancelled")
    spec: dict[str, Any]
    counts: dict[str, int] = Field(description="trials by their job's status")
    trials: int = Field(description="trials made so far")
    total_trials: int = Field(description="trials the sweep makes in all")
    best: SweepBest | None
    history: list[SweepHistoryPoint]
    error: str | None
    notes: list[Any] = Field(description="sampled points that made no valid spec, and why")
    cancel_requested: bool
    mlflow_run_id: str | None
    created_at: datetime
    started_at: datetime | None
    finished_at: datetime | None


class SweepPage(BaseModel):
    items: list[Sweep]
    next_cursor: str | None


class TrialItem(BaseModel):
    id: str = Field(description="the trial's job id")
    trial: int
    status: JobStatus
    params: dict[str, Any]
    objective: float | None = Field(description="once it ended: its final (or, pruned, last) value")
    epoch: int | None = Field(description="the last epoch it trained")
    mlflow_run_id: str | None


class TrialPage(BaseModel):
    items: list[TrialItem]
    next_cursor: str | None


class WebhookCreate(BaseModel):
    model_config = ConfigDict(extra="forbid")

    url: str = Field(description="http(s) URL with a public address", max_length=2000)
    events: list[str] | None = Field(
        None,
        description="what it receives: job.succeeded, job.failed, job.cancelled, job.pruned,"
        " sweep.succeeded, sweep.failed, sweep.cancelled, or job.*, sweep.*, *; default: all",
        max_length=20,
    )


class Webhook(BaseModel):
    id: str
    url: str
    events: list[str]
    created_at: datetime
    rotated_at: datetime | None
    secret: str | None = Field(
        None, description="the signing secret: only in the answer to a creation or rotation"
    )


class WebhookList(BaseModel):
    items: list[Webhook]


class Delivery(BaseModel):
    event_id: str = Field(description="Gradq-Event-Id: the same in every attempt")
    event: str
    subject_id: str = Field(description="the job's or sweep's id")
    occurred_at: datetime
    attempts: int
    uncertain: int = Field(description="attempts whose outcome is unknown (may have arrived)")
    last_attempt_at: datetime | None
    last_status_code: int | None
    last_error: str | None
    next_attempt_at: datetime | None = Field(description="None once delivered or given up")
    delivered_at: datetime | None
    gave_up_at: datetime | None


class DeliveryPage(BaseModel):
    items: list[Delivery]
    next_cursor: str | None = Field(description="pass as ?cursor= for the next page")
