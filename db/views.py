"""Plain frozen views returned by the store: never ORM objects outside a session."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field, fields
from datetime import datetime
from typing import Any

from db.states import JobStatus, StopReason


@dataclass(frozen=True)
class JobView:
    """Every column of a job. ``spec`` is the JobSpec as a JSON dict.

    ``created`` is True only on the value :meth:`JobStore.submit` returns when that call
    inserted the job; an idempotent replay of the same submit, and every ``get``/``list``,
    give False.
    """

    id: str
    tenant: str
    name: str
    spec: dict[str, Any]
    status: JobStatus
    priority: int
    attempt: int
    max_attempts: int
    lease_owner: str | None
    lease_expires_at: datetime | None
    cancel_requested: bool
    progress: dict[str, Any] | None
    result: dict[str, Any] | None
    error: Any
    mlflow_run_id: str | None
    mlflow_experiment_id: str | None  # the run's; None for a run stored before migration 0004
    checkpoint_uri: str | None
    node: str | None
    pending_reason: str | None
    idempotency_key: str | None
    created_at: datetime
    started_at: datetime | None
    finished_at: datetime | None
    updated_at: datetime
    origin_job_id: str | None = None  # the job a rerun was made from
    retries: int | None = None  # retries after a transient failure (migration 0009)
    not_before: datetime | None = None  # a retried job waits for it before a claim
    created: bool = field(default=False, compare=False)

    @classmethod
    def from_row(cls, row: Mapping[Any, Any], *, created: bool = False) -> JobView:
        """Build from a row mapping or a dict holding every column."""
        values = {f.name: row[f.name] for f in fields(cls) if f.name != "created"}
        values["status"] = JobStatus(values["status"])
        values["cancel_requested"] = bool(values["cancel_requested"])
        return cls(**values, created=created)


@dataclass(frozen=True)
class Submitted:
    """A submit's answer: the job, and how many queued jobs a claim takes before it, as of
    the submit's commit (None when it is not queued)."""

    job: JobView
    position: int | None


@dataclass(frozen=True)
class ClaimedJob:
    """What a worker needs to run one attempt of a claimed job."""

    id: str
    attempt: int
    spec: dict[str, Any]
    tenant: str
    priority: int
    lease_expires_at: datetime
    checkpoint_uri: str | None
    mlflow_run_id: str | None


@dataclass(frozen=True)
class StopRequest:
    """A running job asked to stop: its current attempt and why (a :class:`StopReason`)."""

    job_id: str
    attempt: int
    reason: StopReason


@dataclass(frozen=True)
class EventView:
    """One status change of a job (``from_status`` is None for the submit)."""

    id: int
    job_id: str
    at: datetime
    from_status: JobStatus | None
    to_status: JobStatus
    attempt: int
    reason: str | None


@dataclass(frozen=True)
class DatasetView:
    """An uploaded data set and where its bytes live (``uri``)."""

    id: str
    tenant: str
    name: str
    sha256: str
    size: int
    rows: int
    columns: list[str]
    target: str | None
    uri: str
    created_at: datetime
    # each column as a target would be (``core.uploads.ColumnProfile.to_json``), recorded at
    # upload; None for a data set recorded before profiles were
    profile: dict[str, dict[str, Any]] | None = None


ROLES = ("tenant", "operator")  # an operator's key also reads the service's own metrics


@dataclass(frozen=True)
class ApiKeyView:
    """An API key without its secret: its role and the caps it sets (None: none)."""

    id: str
    tenant: str
    prefix: str
    created_at: datetime
    revoked_at: datetime | None
    role: str = "tenant"
    max_running: int | None = None
    max_priority: int | None = None


@dataclass(frozen=True)
class KeyGrant:
    """What a valid key is: the tenant it acts for and its role (one of :data:`ROLES`)."""

    tenant: str
    role: str


@dataclass(frozen=True)
class TenantCaps:
    """A tenant's caps: the most jobs it may have running at once and the highest priority
    it may submit (None: no cap)."""

    max_running: int | None = None
    max_priority: int | None = None
