"""The ORM models (SQLAlchemy 2, typed). The schema itself is created only by the Alembic
migrations in ``db/migrations``; a test checks that they agree with these models.

Times are timezone-aware UTC (:class:`UTCDateTime`); JSON columns are ``JSON`` with a
``JSONB`` variant on PostgreSQL.
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any, ClassVar, cast

from sqlalchemy import (
    JSON,
    BigInteger,
    Boolean,
    CheckConstraint,
    DateTime,
    Dialect,
    Float,
    ForeignKey,
    Index,
    Integer,
    MetaData,
    String,
    Table,
    Text,
    TypeDecorator,
    UniqueConstraint,
)
from sqlalchemy.dialects.postgresql import JSONB
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

JSONType = JSON().with_variant(JSONB(), "postgresql")

STATUS_CHECK = (
    "status IN ('queued', 'running', 'succeeded', 'failed', 'cancelled', 'pruned')"  # 0006
)
SWEEP_STATUS_CHECK = "status IN ('queued', 'running', 'succeeded', 'failed', 'cancelled')"


class UTCDateTime(TypeDecorator[datetime]):
    """A timezone-aware UTC datetime on every backend.

    Values are converted to UTC before they are bound (naive values are taken as UTC), so
    SQLite's text storage compares in time order; values read back always carry ``UTC``.
    """

    impl = DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        if value.tzinfo is None:
            value = value.replace(tzinfo=UTC)
        value = value.astimezone(UTC)
        return value.replace(tzinfo=None) if dialect.name == "sqlite" else value

    def bind_processor(self, dialect: Dialect) -> Callable[[Any], Any] | None:
        """The bind processing, remembering its last value: a group of submits binds one
        ``now`` to every row's ``created_at``, ``updated_at`` and event ``at``, and on SQLite
        each conversion formats a string in Python."""
        process = super().bind_processor(dialect)
        if process is None:
            return None
        # (the last value, what it became), swapped as one object: threads share the processor
        last: list[tuple[Any, Any]] = [(None, None)]

        def remembered(value: Any) -> Any:
            seen = last[0]
            if value is not None and value is seen[0]:  # it holds the value: ids not reused
                return seen[1]
            out = process(value)
            last[0] = (value, out)
            return out

        return remembered

    def process_result_value(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        if value.tzinfo is None:
            return value.replace(tzinfo=UTC)
        return value.astimezone(UTC)


def utcnow() -> datetime:
    """The current time, timezone-aware UTC: the one clock the stores use."""
    return datetime.now(UTC)


NAMING_CONVENTION = {
    "ix": "ix_%(table_name)s_%(column_0_N_name)s",
    "uq": "uq_%(table_name)s_%(column_0_N_name)s",
    "ck": "ck_%(table_name)s_%(constraint_name)s",
    "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
    "pk": "pk_%(table_name)s",
}


class Base(DeclarativeBase):
    metadata = MetaData(naming_convention=NAMING_CONVENTION)
    type_annotation_map: ClassVar[dict[Any, Any]] = {
        dict[str, Any]: JSONType,
        datetime: UTCDateTime,
    }


class Job(Base):
    """A training job and its current attempt."""

    __tablename__ = "jobs"
    __table_args__ = (
        UniqueConstraint("tenant", "idempotency_key"),
        CheckConstraint(STATUS_CHECK, name="status"),
        # the claim order, and every count of queued jobs ahead of one, read only this index
        Index("ix_jobs_queue", "status", "cancel_requested", "priority", "created_at", "id"),
        Index("ix_jobs_tenant_status", "tenant", "status"),  # a tenant's queued count (quota)
        Index("ix_jobs_tenant_created", "tenant", "created_at", "id"),
        Index("ix_jobs_created", "created_at", "id"),
        Index("ix_jobs_lease", "status", "lease_expires_at"),
    )

    id: Mapped[str] = mapped_column(String(36), primary_key=True)
    tenant: Mapped[str] = mapped_column(String(100))
    name: Mapped[str] = mapped_column(String(200))
    spec: Mapped[dict[str, Any]] = mapped_column(JSONType)
    status: Mapped[str] = mapped_column(String(16))
    priority: Mapped[int] = mapped_column(Integer)
    attempt: Mapped[int] = mapped_column(Integer)
    max_attempts: Mapped[int] = mapped_column(Integer)
    lease_owner: Mapped[str | None] = mapped_column(String(200))
    lease_expires_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    cancel_requested: Mapped[bool] = mapped_column(Boolean)
    progress: Mapped[dict[str, Any] | None] = mapped_column(JSONType)
    result: Mapped[dict[str, Any] | None] = mapped_column(JSONType)
    error: Mapped[Any] = mapped_column(JSONType, nullable=True)  # a dict or a plain message
    mlflow_run_id: Mapped[str | None] = mapped_column(String(64))
    mlflow_experiment_id: Mapped[str | None] = mapped_column(String(64))  # migration 0004
    checkpoint_uri: Mapped[str | None] = mapped_column(Text)
    node: Mapped[str | None] = mapped_column(String(200))
    pending_reason: Mapped[str | None] = mapped_column(Text)
    # why a stop was asked when not a cancel ("pruned"; ``cancel_requested`` is set for any)
    stop_reason: Mapped[str | None] = mapped_column(String(16))  # migration 0006
    idempotency_key: Mapped[str | None] = mapped_column(String(200))
    created_at: Mapped[datetime] = mapped_column(UTCDateTime)
    started_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    finished_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    updated_at: Mapped[datetime] = mapped_column(UTCDateTime)
    origin_job_id: Mapped[str | None] = mapped_column(String(36))  # a rerun's, migration 0007
    # the retries after a transient failure (``spec.retry``; NULL: none), counted apart
    # from the attempts lost leases take, and when a retried job may be claimed again
    retries: Mapped[int | None] = mapped_column(Integer)  # migration 0009
    not_before: Mapped[datetime | None] = mapped_column(UTCDateTime)  # migration 0009


class JobEvent(Base):
    """One change of a job's status: old → new, the attempt and why."""

    __tablename__ = "job_events"

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    job_id: Mapped[str] = mapped_column(
        String(36), ForeignKey("jobs.id", ondelete="CASCADE"), index=True
    )
    at: Mapped[datetime] = mapped_column(UTCDateTime)
    from_status: Mapped[str | None] = mapped_column(String(16))
    to_status: Mapped[str] = mapped_column(String(16))
    attempt: Mapped[int] = mapped_column(Integer)
    reason: Mapped[str | None] = mapped_column(Text)


class QueueDepth(Base):
    """Jobs a claim could take (queued, no cancel requested) per tenant and priority: the
    submit's queue positions and quota in O(1). Kept by triggers on ``jobs`` (migration
    0003), never written by the code."""

    __tablename__ = "queue_depth"

    tenant: Mapped[str] = mapped_column(String(100), primary_key=True)
    priority: Mapped[int] = mapped_column(Integer, primary_key=True)
    queued: Mapped[int] = mapped_column(BigInteger)


class Dataset(Base):
    """An uploaded data set; ``uri`` says where a worker on any machine can read the bytes."""

    __tablename__ = "datasets"
    __table_args__ = (Index("ix_datasets_tenant_created", "tenant", "created_at"),)

    id: Mapped[str] = mapped_column(String(36), primary_key=True)
    tenant: Mapped[str] = mapped_column(String(100))
    name: Mapped[str] = mapped_column(String(200))
    sha256: Mapped[str] = mapped_column(String(64))
    size: Mapped[int] = mapped_column(BigInteger)
    rows: Mapped[int] = mapped_column(Integer)
    # the names, or {"names": [...], "profile": {...}} (db.datasets reads both)
    columns: Mapped[list[str] | dict[str, Any]] = mapped_column(JSONType)
    target: Mapped[str | None] = mapped_column(String(200))
    uri: Mapped[str] = mapped_column(Text)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime)


class ApiKey(Base):
    """An API key: only the sha256 of the key is stored, with a short prefix for display;
    its role ("tenant" or "operator") and the caps it sets on its tenant (migration 0005)."""

    __tablename__ = "api_keys"

    id: Mapped[str] = mapped_column(String(36), primary_key=True)
    tenant: Mapped[str] = mapped_column(String(100), index=True)
    key_hash: Mapped[str] = mapped_column(String(64), unique=True)
    prefix: Mapped[str] = mapped_column(String(16), index=True)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime)
    revoked_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    role: Mapped[str] = mapped_column(String(16), server_default="tenant")
    max_running: Mapped[int | None] = mapped_column(Integer)
    max_priority: Mapped[int | None] = mapped_column(Integer)


class Sweep(Base):
    """A sweep (migration 0006): its spec, status, the controller holding it (a lease, like
    an attempt's) and what it found. Its trials are :class:`Trial` rows, each an ordinary job;
    the searcher's own state is an Optuna study stored apart (``workers.sweeps``)."""

    __tablename__ = "sweeps"
    __table_args__ = (
        CheckConstraint(SWEEP_STATUS_CHECK, name="status"),
        Index("ix_sweeps_tenant_created", "tenant", "created_at", "id"),
        Index("ix_sweeps_status_lease", "status", "lease_expires_at"),
    )

    id: Mapped[str] = mapped_column(String(36), primary_key=True)
    tenant: Mapped[str] = mapped_column(String(100))
    name: Mapped[str] = mapped_column(String(200))
    spec: Mapped[dict[str, Any]] = mapped_column(JSONType)
    status: Mapped[str] = mapped_column(String(16))
    cancel_requested: Mapped[bool] = mapped_column(Boolean)
    lease_owner: Mapped[str | None] = mapped_column(String(200))
    lease_expires_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    best: Mapped[dict[str, Any] | None] = mapped_column(JSONType)
    error: Mapped[str | None] = mapped_column(Text)
    notes: Mapped[Any] = mapped_column(JSONType, nullable=True)  # a list of messages
    mlflow_run_id: Mapped[str | None] = mapped_column(String(64))
    mlflow_experiment_id: Mapped[str | None] = mapped_column(String(64))
    idempotency_key: Mapped[str | None] = mapped_column(String(200))
    created_at: Mapped[datetime] = mapped_column(UTCDateTime)
    started_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    finished_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    updated_at: Mapped[datetime] = mapped_column(UTCDateTime)


class Trial(Base):
    """One trial of a sweep: its number (the Optuna trial's), its job and the values
    searched; ``objective`` once it ended (its final value, or its last report when pruned),
    ``told`` once the searcher was told how it ended, ``ended_seq`` the order it ended in."""

    __tablename__ = "trials"
    __table_args__ = (Index("ix_trials_sweep_objective", "sweep_id", "objective"),)

    sweep_id: Mapped[str] = mapped_column(
        String(36), ForeignKey("sweeps.id", ondelete="CASCADE"), primary_key=True
    )
    number: Mapped[int] = mapped_column(Integer, primary_key=True)
    job_id: Mapped[str] = mapped_column(String(36), unique=True)
    params: Mapped[dict[str, Any]] = mapped_column(JSONType)
    objective: Mapped[float | None] = mapped_column(Float)
    told: Mapped[bool] = mapped_column(Boolean)
    ended_seq: Mapped[int | None] = mapped_column(Integer)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime)


class TrialReport(Base):
    """The objective a trial reported at the end of a rung's epoch and ASHA's decision,
    taken from the reports of that rung stored before it (lower ``id``): the decisions are
    reproducible from this table. One per trial and rung: a later attempt of the trial that
    reaches the rung again reads the decision made the first time."""

    __tablename__ = "trial_reports"
    __table_args__ = (
        UniqueConstraint("job_id", "rung"),
        Index("ix_trial_reports_sweep_rung", "sweep_id", "rung", "id"),
    )

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    sweep_id: Mapped[str] = mapped_column(String(36), ForeignKey("sweeps.id", ondelete="CASCADE"))
    job_id: Mapped[str] = mapped_column(String(36))
    rung: Mapped[int] = mapped_column(Integer)  # the epoch
    value: Mapped[float | None] = mapped_column(Float)  # None: not finite
    promoted: Mapped[bool] = mapped_column(Boolean)
    attempt: Mapped[int] = mapped_column(Integer)
    at: Mapped[datetime] = mapped_column(UTCDateTime)


class Webhook(Base):
    """A URL of a tenant's that receives a signed POST when one of its jobs or sweeps ends
    (migration 0008). ``secret`` signs every delivery (it has to be kept to sign: only the
    API's answer to a creation or a rotation shows it); ``events`` lists what it receives,
    as registered, and :class:`WebhookSubscription` holds the same list one row per event
    (what the outbox's insert joins on)."""

    __tablename__ = "webhooks"
    __table_args__ = (Index("ix_webhooks_tenant_created", "tenant", "created_at", "id"),)

    id: Mapped[str] = mapped_column(String(36), primary_key=True)
    tenant: Mapped[str] = mapped_column(String(100))
    url: Mapped[str] = mapped_column(Text)
    events: Mapped[list[str]] = mapped_column(JSONType)
    secret: Mapped[str] = mapped_column(String(100))
    created_at: Mapped[datetime] = mapped_column(UTCDateTime)
    rotated_at: Mapped[datetime | None] = mapped_column(UTCDateTime)


class WebhookSubscription(Base):
    """One event type (``job.succeeded``, ``sweep.failed``, …) a webhook receives."""

    __tablename__ = "webhook_subscriptions"

    webhook_id: Mapped[str] = mapped_column(
        String(36), ForeignKey("webhooks.id", ondelete="CASCADE"), primary_key=True
    )
    event: Mapped[str] = mapped_column(String(32), primary_key=True)


class WebhookDelivery(Base):
    """The outbox: one row per event and webhook, written in the transaction of the status
    change it tells of, and the delivery log of that webhook. ``next_attempt_at`` is when it
    is due (NULL once delivered or given up); a deliverer holds it by a lease
    (``lease_owner``, and ``next_attempt_at`` pushed to the lease's end) for one attempt;
    ``uncertain`` counts the attempts whose outcome is unknown (the receiver may have got
    them: a timeout after the request was sent, or a deliverer that stopped mid-attempt)."""

    __tablename__ = "webhook_deliveries"
    __table_args__ = (
        UniqueConstraint("webhook_id", "event_id"),
        Index("ix_webhook_deliveries_due", "next_attempt_at"),
        Index("ix_webhook_deliveries_webhook", "webhook_id", "id"),
    )

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    webhook_id: Mapped[str] = mapped_column(
        String(36), ForeignKey("webhooks.id", ondelete="CASCADE")
    )
    tenant: Mapped[str] = mapped_column(String(100))
    event_id: Mapped[str] = mapped_column(String(100))
    event: Mapped[str] = mapped_column(String(32))
    subject_id: Mapped[str] = mapped_column(String(36))
    occurred_at: Mapped[datetime] = mapped_column(UTCDateTime)
    attempts: Mapped[int] = mapped_column(Integer)
    uncertain: Mapped[int] = mapped_column(Integer)
    next_attempt_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    lease_owner: Mapped[str | None] = mapped_column(String(200))
    last_attempt_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    last_status_code: Mapped[int | None] = mapped_column(Integer)
    last_error: Mapped[str | None] = mapped_column(Text)
    delivered_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    gave_up_at: Mapped[datetime | None] = mapped_column(UTCDateTime)


# The job tables, for the Core statements of db.store (writes) and db.queries (reads).
JOBS = cast(Table, Job.__table__)
EVENTS = cast(Table, JobEvent.__table__)
QUEUE_DEPTH = cast(Table, QueueDepth.__table__)
SWEEPS = cast(Table, Sweep.__table__)
TRIALS = cast(Table, Trial.__table__)
REPORTS = cast(Table, TrialReport.__table__)
WEBHOOKS = cast(Table, Webhook.__table__)
SUBSCRIPTIONS = cast(Table, WebhookSubscription.__table__)
DELIVERIES = cast(Table, WebhookDelivery.__table__)
