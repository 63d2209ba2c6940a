"""Webhooks: a tenant's URLs, and the outbox of the events they are told of.

The outbox (``webhook_deliveries``) gets one row per event and subscribed webhook in the
transaction of the status change it tells of: :func:`outbox_insert` is a statement of that
transaction (``db.store.move`` for a job's terminal move, ``db.sweeps`` for a sweep's end),
so an event is stored exactly when its change is. An event's id (``job.succeeded:<job id>``)
names the change: a job or a sweep reaches a terminal status once, so each id is unique,
the same for every webhook of the tenant, and the same in every attempt to deliver it.

A deliverer (``api.webhooks``) takes due rows by a lease (:meth:`WebhookStore.claim`): one
attempt each, ``attempts + 1``, ``next_attempt_at`` pushed to the lease's end, so no other
deliverer takes the row while the attempt may run; it records the outcome fenced by its lease
and attempt (:meth:`WebhookStore.record`). A row taken again while a lease of its was never
closed (the deliverer stopped mid-attempt) counts one more attempt of unknown outcome
(``uncertain``), like a request that timed out once sent.
"""

from __future__ import annotations

import builtins
import functools
import secrets
import uuid
from collections.abc import Sequence
from dataclasses import dataclass, fields
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import (
    CTE,
    Connection,
    Engine,
    FromClause,
    Insert,
    Integer,
    String,
    bindparam,
    case,
    column,
    delete,
    insert,
    literal,
    select,
    table,
    update,
)

from db.errors import StoreError
from db.models import (
    DELIVERIES,
    SUBSCRIPTIONS,
    SWEEPS,
    WEBHOOKS,
    UTCDateTime,
    utcnow,
)
from db.session import read_tx, write_tx

JOB_EVENTS = ("job.succeeded", "job.failed", "job.cancelled", "job.pruned")
SWEEP_EVENTS = ("sweep.succeeded", "sweep.failed", "sweep.cancelled")
EVENTS = JOB_EVENTS + SWEEP_EVENTS
"""Every event a webhook can receive: ``job.<terminal status>``, ``sweep.<terminal status>``."""


class WebhookNotFound(StoreError):
    """No webhook with this id (or not visible to this tenant)."""

    def __init__(self, webhook_id: str) -> None:
        self.webhook_id = webhook_id
        super().__init__(f"webhook {webhook_id} not found")


def new_secret() -> str:
    """A signing secret: 32 random bytes, URL-safe text after ``whsec_``."""
    return "whsec_" + secrets.token_urlsafe(32)


OUTBOX_NOW = "outbox_now"
"""The bind parameter of every outbox statement: the time of the change it tells of."""
MOVED = table("moved", column("id", String()), column("tenant", String()))
"""The jobs a terminal move just changed: ``db.store.move``'s CTE of that name (PostgreSQL)."""


def outbox_insert(source: FromClause, kind: str, status: str) -> Insert:
    """INSERT … SELECT of the outbox rows of ``kind.status`` (``job.succeeded``) for each
    subject of ``source`` (columns ``id``, ``tenant``: the jobs or sweeps that just moved):
    one per webhook of the subject's tenant subscribed to the event, due at once (the time
    bound as :data:`OUTBOX_NOW`). A statement for the caller's transaction; portable (SQLite
    and PostgreSQL, also inside a data-modifying CTE). The callers' statements are built
    once (cached): building one costs more than running it."""
    event = f"{kind}.{status}"
    w, s = WEBHOOKS.c, SUBSCRIPTIONS.c
    at = bindparam(OUTBOX_NOW, type_=UTCDateTime())
    rows = (
        select(
            w.id,
            source.c.tenant,
            literal(f"{event}:", String()) + source.c.id,
            literal(event, String()),
            source.c.id,
            at,
            literal(0, Integer()),
            literal(0, Integer()),
            at,
        )
        .select_from(source)
        .join(WEBHOOKS, w.tenant == source.c.tenant)
        .join(SUBSCRIPTIONS, (s.webhook_id == w.id) & (s.event == event))
    )
    return insert(DELIVERIES).from_select(OUTBOX_COLUMNS, rows)


@functools.cache
def moved_jobs_outbox(status: str) -> CTE:
    """PostgreSQL: the CTE ``told`` that writes the outbox rows of the jobs in the CTE
    ``moved`` (:data:`MOVED`), for a move to ``status``."""
    return outbox_insert(MOVED, "job", status).cte("told")


@functools.cache
def jobs_outbox(status: str) -> Insert:
    """The outbox rows of one job, its id and tenant bound as ``outbox_id`` and
    ``outbox_tenant`` (run once per moved job: the same text every time), for a move to
    ``status``."""
    job = select(
        bindparam("outbox_id", type_=String()).label("id"),
        bindparam("outbox_tenant", type_=String()).label("tenant"),
    ).subquery()
    return outbox_insert(job, "job", status)


@functools.cache
def _sweep_outbox(status: str) -> Insert:
    one = SWEEPS.c.id == bindparam("outbox_sweep")
    source = select(SWEEPS.c.id, SWEEPS.c.tenant).where(one).subquery()
    return outbox_insert(source, "sweep", status)


def tell_sweep(conn: Connection, sweep_id: str, status: str, now: datetime) -> None:
    """Write the outbox rows of the sweep that ended ``status`` at ``now``, in ``conn``'s
    transaction (the one that ends it)."""
    conn.execute(_sweep_outbox(status), {OUTBOX_NOW: now, "outbox_sweep": sweep_id})


OUTBOX_COLUMNS = (
    "webhook_id", "tenant", "event_id", "event", "subject_id", "occurred_at", "attempts",
    "uncertain", "next_attempt_at",
)  # fmt: skip


@dataclass(frozen=True)
class WebhookView:
    id: str
    tenant: str
    url: str
    events: list[str]
    created_at: datetime
    rotated_at: datetime | None
    secret: str | None = None  # only from create and rotate

    @classmethod
    def from_row(cls, row: Any, *, secret: str | None = None) -> WebhookView:
        values = {f.name: getattr(row, f.name) for f in fields(cls) if f.name != "secret"}
        return cls(**values, secret=secret)


@dataclass(frozen=True)
class DeliveryView:
    """One row of a webhook's delivery log."""

    id: int
    event_id: str
    event: str
    subject_id: str
    occurred_at: datetime
    attempts: int
    uncertain: int
    last_attempt_at: datetime | None
    last_status_code: int | None
    last_error: str | None
    next_attempt_at: datetime | None
    delivered_at: datetime | None
    gave_up_at: datetime | None

    @classmethod
    def from_row(cls, row: Any) -> DeliveryView:
        return cls(**{f.name: getattr(row, f.name) for f in fields(cls)})


@dataclass(frozen=True)
class DueDelivery:
    """A delivery a deliverer holds for one attempt (``attempt``), with what it needs to
    send it: its webhook's URL and current secret."""

    id: int
    tenant: str
    event_id: str
    event: str
    subject_id: str
    occurred_at: datetime
    attempt: int
    url: str
    secret: str


class WebhookStore:
    """A tenant's webhooks and their outbox. Methods are keyword-only."""

    def __init__(self, engine: Engine) -> None:
        self._engine = engine

    # --- the tenant's side -----------------------------------------------------------------

    def create(self, *, tenant: str, url: str, events: Sequence[str]) -> WebhookView:
        """Register ``url`` for ``events`` (each of :data:`EVENTS`); the view carries the new
        secret, the only time it is returned but for a rotation."""
        unknown = sorted(set(events) - set(EVENTS))
        if unknown or not events:
            raise ValueError(f"events must be some of {EVENTS}, not {unknown or 'none'}")
        webhook_id, secret, wanted = str(uuid.uuid4()), new_secret(), list(dict.fromkeys(events))
        row = dict(
            id=webhook_id, tenant=tenant, url=url, events=wanted, secret=secret,
            created_at=utcnow(), rotated_at=None,
        )  # fmt: skip
        with write_tx(self._engine) as conn:
            conn.execute(insert(WEBHOOKS), [row])
            conn.execute(
                insert(SUBSCRIPTIONS), [dict(webhook_id=webhook_id, event=e) for e in wanted]
            )
            return self._get(conn, webhook_id, tenant, secret=secret)

    def get(self, *, webhook_id: str, tenant: str) -> WebhookView:
        with read_tx(self._engine) as conn:
            return self._get(conn, webhook_id, tenant)

    @staticmethod
    def _get(conn: Any, webhook_id: str, tenant: str, secret: str | None = None) -> WebhookView:
        row = conn.execute(
            select(WEBHOOKS).where(WEBHOOKS.c.id == webhook_id, WEBHOOKS.c.tenant == tenant)
        ).first()
        if row is None:
            raise WebhookNotFound(webhook_id)
        return WebhookView.from_row(row, secret=secret)

    def list(self, *, tenant: str) -> builtins.list[WebhookView]:
        """The tenant's webhooks, oldest first."""
        w = WEBHOOKS.c
        query = select(WEBHOOKS).where(w.tenant == tenant).order_by(w.created_at, w.id)
        with read_tx(self._engine) as conn:
            return [WebhookView.from_row(r) for r in conn.execute(query)]

    def delete(self, *, webhook_id: str, tenant: str) -> None:
        """Remove the webhook, its subscriptions and its outbox rows (nothing more is sent)."""
        w = WEBHOOKS.c
        with write_tx(self._engine) as conn:
            gone = conn.execute(
                delete(WEBHOOKS).where(w.id == webhook_id, w.tenant == tenant).returning(w.id)
            ).first()
            if gone is None:
                raise WebhookNotFound(webhook_id)
            # SQLite enforces the cascade too (foreign keys on); said here for both backends
            conn.execute(delete(SUBSCRIPTIONS).where(SUBSCRIPTIONS.c.webhook_id == webhook_id))
            conn.execute(delete(DELIVERIES).where(DELIVERIES.c.webhook_id == webhook_id))

    def rotate(self, *, webhook_id: str, tenant: str) -> WebhookView:
        """A new secret, which signs every attempt from now on (those of events stored before
        too); the old one signs nothing more. The view carries the new secret."""
        secret, now = new_secret(), utcnow()
        w = WEBHOOKS.c
        with write_tx(self._engine) as conn:
            done = conn.execute(
                update(WEBHOOKS)
                .where(w.id == webhook_id, w.tenant == tenant)
                .values(secret=secret, rotated_at=now)
                .returning(w.id)
            ).first()
            if done is None:
                raise WebhookNotFound(webhook_id)
            return self._get(conn, webhook_id, tenant, secret=secret)

    def deliveries(
        self, *, webhook_id: str, tenant: str, limit: int = 50, before: int | None = None
    ) -> tuple[builtins.list[DeliveryView], int | None]:
        """The webhook's delivery log, newest event first, ``limit`` at a time; the next
        page's ``before`` (None on the last page)."""
        d = DELIVERIES.c
        query = select(DELIVERIES).where(d.webhook_id == webhook_id)
        if before is not None:
            query = query.where(d.id < before)
        with read_tx(self._engine) as conn:
            self._get(conn, webhook_id, tenant)
            rows = conn.execute(query.order_by(d.id.desc()).limit(limit + 1)).all()
        items = [DeliveryView.from_row(r) for r in rows[:limit]]
        return items, (items[-1].id if len(rows) > limit else None)

    # --- the deliverer's side --------------------------------------------------------------

    def claim(self, *, owner: str, lease_seconds: float, limit: int) -> builtins.list[DueDelivery]:
        """Take up to ``limit`` due deliveries (oldest due first) for one attempt each:
        ``attempts + 1``, held by ``owner`` until ``lease_seconds`` from now (their
        ``next_attempt_at``). A row whose earlier lease was never closed counts an attempt
        of unknown outcome. PostgreSQL skips rows another deliverer is taking; SQLite holds
        the write lock. When nothing is due it only reads."""
        now = utcnow()
        d, w = DELIVERIES.c, WEBHOOKS.c
        # first a read (no write lock, no write transaction) when, as mostly, nothing is due
        with read_tx(self._engine) as conn:
            if conn.execute(select(d.id).where(d.next_attempt_at <= now).limit(1)).first() is None:
                return []
        with write_tx(self._engine) as conn:
            picked = select(d.id).where(d.next_attempt_at <= now).order_by(d.next_attempt_at)
            picked = picked.limit(limit)
            if conn.dialect.name == "postgresql":
                picked = picked.with_for_update(skip_locked=True)
            ids = builtins.list(conn.execute(picked).scalars())
            if not ids:
                return []
            conn.execute(
                update(DELIVERIES)
                .where(d.id.in_(ids))
                .values(
                    attempts=d.attempts + 1,
                    uncertain=d.uncertain + case((d.lease_owner.is_(None), 0), else_=1),
                    lease_owner=owner,
                    next_attempt_at=now + timedelta(seconds=lease_seconds),
                )
            )
            held = (
                d.id, d.tenant, d.event_id, d.event, d.subject_id, d.occurred_at,
                d.attempts.label("attempt"), w.url, w.secret,
            )  # fmt: skip
            rows = conn.execute(
                select(*held)
                .join(WEBHOOKS, w.id == d.webhook_id)
                .where(d.id.in_(ids))
                .order_by(d.next_attempt_at, d.id)
            )
            return [DueDelivery(**r._mapping) for r in rows]

    def record(
        self,
        *,
        delivery_id: int,
        owner: str,
        attempt: int,
        delivered: bool,
        status_code: int | None = None,
        error: str | None = None,
        uncertain: bool = False,
        retry_at: datetime | None = None,
    ) -> bool:
        """Close the attempt ``owner`` holds: delivered, or not (its status code or error)
        with the next attempt at ``retry_at`` (None: given up). ``uncertain``: the receiver
        may have got it. Fenced by the lease and the attempt: False (nothing written) when
        the row was taken again since."""
        now = utcnow()
        d = DELIVERIES.c
        values: dict[str, Any] = dict(
            lease_owner=None, last_attempt_at=now, last_status_code=status_code,
            last_error=None if delivered else error, next_attempt_at=None,
        )  # fmt: skip
        if uncertain:
            values["uncertain"] = d.uncertain + 1
        if delivered:
            values["delivered_at"] = now
        elif retry_at is None:
            values["gave_up_at"] = now
        else:
            values["next_attempt_at"] = retry_at
        with write_tx(self._engine) as conn:
            held = conn.execute(
                update(DELIVERIES)
                .where(d.id == delivery_id, d.lease_owner == owner, d.attempts == attempt)
                .values(values)
                .returning(d.id)
            ).first()
        return held is not None
