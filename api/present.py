"""From the store's views to the HTTP schemas (and JSON-safe numbers)."""

from __future__ import annotations

import math
from typing import Any

from api import schemas
from db.views import DatasetView, EventView, JobView


def finite(value: Any) -> Any:
    """``value`` with every NaN or infinity replaced by None (JSON has neither)."""
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, dict):
        return {k: finite(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [finite(v) for v in value]
    return value


def job(
    view: JobView,
    *,
    queue_position: int | None = None,
    pending_reason: str | None = None,
    mlflow_link: str | None = None,
    pydantic_json: bool = False,
) -> schemas.Job:
    """The job's schema. ``pydantic_json``: the caller renders it with ``model_dump_json``,
    which writes NaN and infinities as null itself, so the values are not walked here."""
    base = f"/v1/jobs/{view.id}"
    safe = (lambda v: v) if pydantic_json else finite
    progress = safe(view.progress) if isinstance(view.progress, dict) else None
    # A job just submitted has no progress, result or error; its other values come typed
    # from the store, so its schema is built without validating them again (the spec, a
    # nested dict, is the costly part; the hot path of POST /v1/jobs renders it at once).
    build = schemas.Job.model_construct if pydantic_json and progress is None else schemas.Job
    links = schemas.JobLinks(
        self=base,
        events=f"{base}/events",
        metrics=f"{base}/metrics",
        cancel=f"{base}/cancel",
        artifacts=f"{base}/artifacts",
        mlflow_run=mlflow_link,
    )
    return build(
        id=view.id,
        name=view.name,
        tenant=view.tenant,
        status=view.status,
        attempt=view.attempt,
        max_attempts=view.max_attempts,
        retries=view.retries or 0,
        priority=view.priority,
        cancel_requested=view.cancel_requested,
        queue_position=queue_position,
        pending_reason=pending_reason,
        progress=schemas.Progress.model_validate(progress) if progress is not None else None,
        result=safe(view.result),
        error=safe(public_error(view.error)),
        mlflow_run_id=view.mlflow_run_id,
        checkpoint_uri=view.checkpoint_uri,
        node=view.node,
        created_at=view.created_at,
        started_at=view.started_at,
        finished_at=view.finished_at,
        updated_at=view.updated_at,
        spec=safe(view.spec),
        tags=view.spec.get("tags") or {},
        origin_job_id=view.origin_job_id,
        links=links,
    )


# What a failed attempt stored for operators only: its traceback names the server's files.
# The worker's log and the run's error.txt in MLflow keep it (workers/task.py).
PRIVATE_ERROR_KEYS = frozenset({"traceback"})


def public_error(error: Any) -> Any:
    """A job's stored ``error`` as clients see it: without ``PRIVATE_ERROR_KEYS``."""
    if isinstance(error, dict) and PRIVATE_ERROR_KEYS & error.keys():
        return {k: v for k, v in error.items() if k not in PRIVATE_ERROR_KEYS}
    return error


def event(view: EventView) -> schemas.Event:
    return schemas.Event.model_validate(view, from_attributes=True)


def dataset(view: DatasetView) -> schemas.Dataset:
    return schemas.Dataset.model_validate(view, from_attributes=True)
