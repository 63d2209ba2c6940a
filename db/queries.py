"""The read side of the job queue: get, list (cursor pages), events, counts, queue position,
and the claim order, defined here once for the claim and every reader.

:class:`JobQueries` is the read half of :class:`db.store.JobStore`; every statement that
changes a job is in :mod:`db.store`.
"""

from __future__ import annotations

import base64
import builtins
import functools
import json
from collections.abc import Iterable, Sequence
from datetime import UTC, datetime
from types import SimpleNamespace
from typing import Any

from sqlalchemy import (
    ColumnElement,
    Connection,
    Engine,
    Integer,
    and_,
    bindparam,
    false,
    func,
    or_,
    select,
    true,
)

from db.errors import InvalidCursor, JobNotFound
from db.filters import (
    MetricBound,
    MetricSort,
    after_in_order,
    bound_term,
    metric_value,
    name_prefix_term,
    sorted_by,
    tag_terms,
)
from db.models import EVENTS, JOBS, QUEUE_DEPTH, utcnow
from db.session import read_tx
from db.states import JobStatus, StopReason
from db.views import EventView, JobView, StopRequest

Q = JobStatus.QUEUED

# --- the claim order ---------------------------------------------------------------------

CLAIMABLE: tuple[ColumnElement[bool], ...] = (
    JOBS.c.status == Q.value,
    JOBS.c.cancel_requested == false(),
)
"""WHERE terms of the jobs a claim may take: queued, no cancel requested (the rows the
queue-depth counters of migration 0003 count)."""


def ready(now: datetime) -> ColumnElement[bool]:
    """WHERE term of the queued jobs a claim may take at ``now``: no backoff, or its
    ``not_before`` passed (a retried job's, ``db.store._retry``). Apart from
    :data:`CLAIMABLE`: the queue-depth counters count a job waiting for its backoff."""
    return or_(JOBS.c.not_before.is_(None), JOBS.c.not_before <= now)


CLAIM_ORDER: tuple[tuple[str, bool], ...] = (
    ("priority", True),
    ("created_at", False),
    ("id", False),
)
"""The order in which claims take queued jobs, as (column, descending), most significant
first: the highest priority, then the oldest, then the smallest id (jobs stamped with one
instant, such as a group of submits). The claim, :meth:`JobQueries.next_queued`, every queue
position and a submit's answers all follow it through :func:`claim_order_by`,
:func:`claim_key` and :func:`ahead_of`. Its first key is the priority: the queue-depth
counters count per priority, so positions read every higher priority from them."""


def claim_order_by() -> list[ColumnElement[Any]]:
    """The claim order as ORDER BY terms (``ix_jobs_queue`` holds the jobs in it)."""
    return [JOBS.c[name].desc() if desc else JOBS.c[name] for name, desc in CLAIM_ORDER]


def claim_key(job: Any) -> tuple[Any, ...]:
    """The claim order as a Python sort key of rows or views (a descending key is an int)."""
    return tuple(-getattr(job, n) if desc else getattr(job, n) for n, desc in CLAIM_ORDER)


def ahead_of(
    job: Any, columns: Any = JOBS.c, keys: int = len(CLAIM_ORDER)
) -> list[list[ColumnElement[bool]]]:
    """Where a row of ``columns`` comes before ``job`` in the claim order, by its first
    ``keys`` keys: alternatives (OR) of conjunctions (AND), one per key, each equal to
    ``job`` on the keys before and ahead of it on this one (each one range of the queue
    index)."""
    out: list[list[ColumnElement[bool]]] = []
    for i, (name, desc) in enumerate(CLAIM_ORDER[:keys]):
        same = [columns[n] == getattr(job, n) for n, _ in CLAIM_ORDER[:i]]
        value = getattr(job, name)
        out.append([*same, columns[name] > value if desc else columns[name] < value])
    return out


# --- stops -------------------------------------------------------------------------------

STOPPING: tuple[ColumnElement[bool], ...] = (
    JOBS.c.status == JobStatus.RUNNING.value,
    JOBS.c.cancel_requested == true(),
)
"""WHERE terms of the running jobs asked to stop, for any reason: ``cancel_requested`` is set
by every stop request (:meth:`db.store.JobStore.request_stop`), so that a claim, a settled
lease and the queue counters treat every stop alike. They are the first two columns of
``ix_jobs_queue``: reading them costs what the stopping jobs are, not the running ones."""

STOP_REASON_STORE = JOBS.c.stop_reason
"""Where a stop's reason other than a cancel is kept (migration 0006). NULL with
``cancel_requested`` set means a cancel."""


def stop_reason(cancel_requested: bool, stored: str | None) -> StopReason | None:
    """The reason of a stop request from a job's ``cancel_requested`` and
    :data:`STOP_REASON_STORE`; None when no stop was requested."""
    if not cancel_requested:
        return None
    known = {r.value: r for r in StopReason}
    return known.get(stored or "", StopReason.CANCEL)


def stop_requests_query(owner: str | None) -> Any:
    """The statement of :meth:`JobQueries.stop_requests`."""
    query = select(JOBS.c.id, JOBS.c.attempt, STOP_REASON_STORE.label("stored")).where(*STOPPING)
    if owner is not None:
        query = query.where(JOBS.c.lease_owner == owner)
    return query  # no ORDER BY: SQLite would rather walk the whole table in its order


# --- reads -------------------------------------------------------------------------------


class JobQueries:
    """Read-only job methods of :class:`db.store.JobStore`."""

    _engine: Engine

    def get(self, *, job_id: str, tenant: str | None = None) -> JobView:
        """The job; :class:`JobNotFound` if absent or (``tenant`` given) another tenant's."""
        with read_tx(self._engine) as conn:
            row = conn.execute(select(JOBS).where(*job_scope(job_id, tenant))).mappings().first()
        if row is None:
            raise JobNotFound(job_id)
        return JobView.from_row(row)

    def list(
        self,
        *,
        tenant: str | None = None,
        status: JobStatus | str | None = None,
        name: str | None = None,
        limit: int = 50,
        cursor: str | None = None,
        id_prefix: str | None = None,
        name_prefix: str | None = None,
        tags: Sequence[tuple[str, str]] = (),
        created_after: datetime | None = None,
        created_before: datetime | None = None,
        bounds: Sequence[MetricBound] = (),
        sort: MetricSort | None = None,
    ) -> tuple[builtins.list[JobView], str | None]:
        """One page of jobs and the cursor of the next page (None on the last): newest first
        (created_at desc, id desc), or with ``sort`` by a final metric (:func:`sorted_by`).
        Filters (all must hold): status, exact name, id prefix and name prefix (taken
        literally: ``%`` and ``_`` are no wildcards), every tag of ``tags``,
        created strictly after/before, every threshold of ``bounds``. Walking the cursors
        with the same filters visits every matching row exactly once."""
        query = select(JOBS)
        if tenant is not None:
            query = query.where(JOBS.c.tenant == tenant)
        if status is not None:
            query = query.where(JOBS.c.status == JobStatus(status).value)
        if name is not None:
            query = query.where(JOBS.c.name == name)
        if id_prefix:
            query = query.where(JOBS.c.id.startswith(id_prefix.lower(), autoescape=True))
        if name_prefix:
            query = query.where(name_prefix_term(JOBS, name_prefix))
        if created_after is not None:
            query = query.where(JOBS.c.created_at > created_after)
        if created_before is not None:
            query = query.where(JOBS.c.created_at < created_before)
        query = query.where(*tag_terms(JOBS, tags), *(bound_term(b) for b in bounds))
        if sort is None:
            query = query.order_by(JOBS.c.created_at.desc(), JOBS.c.id.desc())
            if cursor is not None:
                at, last_id = _decode_cursor(cursor)
                query = query.where(
                    or_(JOBS.c.created_at < at, and_(JOBS.c.created_at == at, JOBS.c.id < last_id))
                )
        else:
            query = query.add_columns(metric_value(sort.metric).label("_sort_value"))
            query = query.order_by(*sorted_by(sort))
            if cursor is not None:
                query = query.where(after_in_order(sort, *_decode_sorted_cursor(cursor, sort)))
        with read_tx(self._engine) as conn:
            rows = conn.execute(query.limit(limit + 1)).mappings().all()
        page = [JobView.from_row(r) for r in rows[:limit]]
        if len(rows) <= limit:
            return page, None
        last = page[-1]
        if sort is None:
            return page, _encode_cursor(last.created_at, last.id)
        return page, _encode_sorted_cursor(sort, rows[limit - 1]["_sort_value"], last)

    def events(self, *, job_id: str, tenant: str | None = None) -> builtins.list[EventView]:
        """The job's status changes in the order they happened."""
        with read_tx(self._engine) as conn:
            if conn.execute(select(JOBS.c.id).where(*job_scope(job_id, tenant))).first() is None:
                raise JobNotFound(job_id)
            rows = conn.execute(
                select(EVENTS).where(EVENTS.c.job_id == job_id).order_by(EVENTS.c.id)
            ).mappings()
            return [
                EventView(
                    id=r["id"],
                    job_id=r["job_id"],
                    at=r["at"],
                    to_status=JobStatus(r["to_status"]),
                    from_status=JobStatus(r["from_status"]) if r["from_status"] else None,
                    attempt=r["attempt"],
                    reason=r["reason"],
                )
                for r in rows
            ]

    def counts_by_status(self, *, tenant: str | None = None) -> dict[str, int]:
        """Number of jobs per status (every status present, 0 when none)."""
        query = select(JOBS.c.status, func.count()).group_by(JOBS.c.status)
        if tenant is not None:
            query = query.where(JOBS.c.tenant == tenant)
        counts = {s.value: 0 for s in JobStatus}
        with read_tx(self._engine) as conn:
            counts.update({status: n for status, n in conn.execute(query).all()})
        return counts

    def running_counts(self, *, tenants: Iterable[str]) -> dict[str, int]:
        """Running jobs of each tenant (0 when none): the dispatcher's per-tenant cap."""
        wanted = sorted(set(tenants))
        query = (
            select(JOBS.c.tenant, func.count())
            .where(JOBS.c.tenant.in_(wanted), JOBS.c.status == JobStatus.RUNNING.value)
            .group_by(JOBS.c.tenant)
        )
        counts = dict.fromkeys(wanted, 0)
        with read_tx(self._engine) as conn:
            counts.update({tenant: n for tenant, n in conn.execute(query).all()})
        return counts

    def count_queued(self, *, tenant: str | None = None) -> int:
        """Queued jobs (of ``tenant``): one count over the claim index, whatever the history."""
        query = select(func.count()).where(JOBS.c.status == Q.value)
        if tenant is not None:
            query = query.where(JOBS.c.tenant == tenant)
        with read_tx(self._engine) as conn:
            return int(conn.execute(query).scalar_one())

    def next_queued(self, *, limit: int = 16) -> builtins.list[JobView]:
        """The queued jobs a claim would take next, in the claim order (not those waiting
        for a retry's backoff); read-only: the dispatcher looks at their resources before
        claiming."""
        query = select(JOBS).where(*CLAIMABLE, ready(utcnow()))
        query = query.order_by(*claim_order_by()).limit(limit)
        with read_tx(self._engine) as conn:
            return [JobView.from_row(r) for r in conn.execute(query).mappings()]

    def stop_requests(self, *, owner: str | None = None) -> builtins.list[StopRequest]:
        """The running jobs asked to stop (of the dispatcher ``owner``'s claims, if given),
        each with its attempt and reason, in one query over :data:`STOPPING`."""
        with read_tx(self._engine) as conn:
            rows = sorted(conn.execute(stop_requests_query(owner)).all(), key=lambda r: r.id)
        return [
            StopRequest(r.id, r.attempt, stop_reason(True, r.stored) or StopReason.CANCEL)
            for r in rows
        ]

    def stop_reason(self, *, job_id: str) -> StopReason | None:
        """Why the job is asked to stop; None when it is not (:class:`JobNotFound` if absent)."""
        query = select(JOBS.c.cancel_requested, STOP_REASON_STORE.label("stored")).where(
            JOBS.c.id == job_id
        )
        with read_tx(self._engine) as conn:
            row = conn.execute(query).first()
        if row is None:
            raise JobNotFound(job_id)
        return stop_reason(bool(row.cancel_requested), row.stored)

    def queue_position(self, *, job_id: str) -> int | None:
        """How many queued jobs a claim takes before this one; None if it is not queued."""
        with read_tx(self._engine) as conn:
            return self.position(conn, self.view(conn, job_id))

    def pending_reason(self, *, job_id: str) -> str | None:
        """Why a queued job waits: the dispatcher's reason if set, else its place in the
        queue; None when the job is not queued."""
        with read_tx(self._engine) as conn:
            job = self.view(conn, job_id)
            ahead = self.position(conn, job)
        if ahead is None:
            return None
        if job.pending_reason:
            return job.pending_reason
        if ahead:
            return f"{ahead} job{'s' if ahead != 1 else ''} ahead in the queue"
        return "waiting for a free worker"

    # --- inside a transaction --------------------------------------------------------------

    @staticmethod
    def view(conn: Connection, job_id: str) -> JobView:
        """The job as seen inside ``conn``'s transaction; :class:`JobNotFound` if absent."""
        row = conn.execute(select(JOBS).where(JOBS.c.id == job_id)).mappings().first()
        if row is None:
            raise JobNotFound(job_id)
        return JobView.from_row(row)

    @staticmethod
    def position(conn: Connection, job: JobView) -> int | None:
        """Queued jobs a claim takes before ``job`` (:func:`ahead_of`); None if not queued.

        A higher priority is read from the per-(tenant, priority) counters (migration 0003);
        the jobs of its own priority ahead of it are counted over ranges of the queue index
        (a count as long as they are many)."""
        if job.status is not Q:
            return None
        [higher] = ahead_of(job, QUEUE_DEPTH.c, keys=1)
        _, *same = ahead_of(job)
        counted = select(func.coalesce(func.sum(QUEUE_DEPTH.c.queued), 0)).where(*higher)
        ranges = [select(func.count()).where(*CLAIMABLE, *r).scalar_subquery() for r in same]
        ahead = sum(ranges, counted.scalar_subquery())
        return int(conn.execute(select(ahead)).scalar_one())


def job_scope(job_id: str, tenant: str | None) -> builtins.list[ColumnElement[bool]]:
    """WHERE terms selecting the job, and only if it belongs to ``tenant`` (when given)."""
    where = [JOBS.c.id == job_id]
    return where if tenant is None else [*where, JOBS.c.tenant == tenant]


# --- what a group of submits reads before its insert -------------------------------------


def keyed_jobs(conn: Connection, keys: Iterable[tuple[str, str]]) -> dict[tuple[str, str], Any]:
    """The jobs that hold these (tenant, idempotency key) pairs: one query per tenant."""
    by_tenant: dict[str, set[str]] = {}
    for tenant, key in keys:
        by_tenant.setdefault(tenant, set()).add(key)
    found: dict[tuple[str, str], Any] = {}  # → the job's row mapping
    for tenant, names in by_tenant.items():
        rows = conn.execute(_keyed_statement(), {"tenant": tenant, "keys": sorted(names)})
        for row in rows.mappings():
            found[(tenant, row["idempotency_key"])] = row
    return found


def jobs_by_id(conn: Connection, ids: Iterable[str]) -> dict[str, Any]:
    """The jobs of these ids that exist, by id (their row mappings)."""
    rows = conn.execute(select(JOBS).where(JOBS.c.id.in_(sorted(set(ids)))))
    return {row["id"]: row for row in rows.mappings()}


def queue_counts(
    conn: Connection, tenants: builtins.list[str], priorities: builtins.list[int]
) -> tuple[dict[str, int], dict[int, int]]:
    """One SELECT on ``queue_depth`` (kept by triggers, migration 0003): each tenant's
    claimable jobs (the quota) and, per priority, how many a claim takes before a job of that
    priority stamped after all of them (a submit's): a higher priority, or the same one (all
    older). Its cost is the table's size (tenants × priorities), not the queue's length."""
    if not tenants and not priorities:
        return {}, {}
    params: dict[str, Any] = {f"t{n}": t for n, t in enumerate(tenants)}
    params.update({f"p{n}": p for n, p in enumerate(priorities)})
    counts = conn.execute(_counts_statement(len(tenants), len(priorities)), params).one()
    queued = {t: int(counts[n]) for n, t in enumerate(tenants)}
    before = {p: int(counts[len(tenants) + n]) for n, p in enumerate(priorities)}
    return queued, before


@functools.cache
def _counts_statement(tenants: int, priorities: int) -> Any:
    """Built once per shape (number of tenants and of priorities in a group); values bound."""
    d = QUEUE_DEPTH.c
    total = func.coalesce(func.sum(d.queued), 0)
    columns: builtins.list[Any] = [
        select(total).where(d.tenant == bindparam(f"t{n}")).scalar_subquery()
        for n in range(tenants)
    ]
    for n in range(priorities):
        priority = bindparam(f"p{n}", type_=Integer)
        [higher] = ahead_of(SimpleNamespace(priority=priority), d, keys=1)
        ahead = or_(and_(*higher), d.priority == priority)
        columns.append(select(total).where(ahead).scalar_subquery())
    return select(*columns)


@functools.cache
def _keyed_statement() -> Any:
    return select(JOBS).where(
        JOBS.c.tenant == bindparam("tenant"),
        JOBS.c.idempotency_key.in_(bindparam("keys", expanding=True)),
    )


def _encode_cursor(at: datetime, job_id: str) -> str:
    raw = json.dumps([at.astimezone(UTC).isoformat(), job_id]).encode()
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")


def _encode_sorted_cursor(sort: MetricSort, value: float | None, job: JobView) -> str:
    at = job.created_at.astimezone(UTC).isoformat()
    raw = json.dumps([sort.metric, sort.descending, value, at, job.id]).encode()
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")


def _decode_sorted_cursor(cursor: str, sort: MetricSort) -> tuple[float | None, datetime, str]:
    """A cursor of :func:`_encode_sorted_cursor` made for the same ``sort``."""
    try:
        raw = base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4))
        metric, descending, value, at, job_id = json.loads(raw)
        if (metric, descending) != (sort.metric, sort.descending):
            raise ValueError("a cursor of another order")
        if value is not None and not isinstance(value, int | float):
            raise ValueError("not a metric value")
        return value, datetime.fromisoformat(at), str(job_id)
    except (ValueError, TypeError) as exc:
        raise InvalidCursor(cursor) from exc


def _decode_cursor(cursor: str) -> tuple[datetime, str]:
    try:
        raw = base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4))
        at, job_id = json.loads(raw)
        return datetime.fromisoformat(at), str(job_id)
    except (ValueError, TypeError) as exc:
        raise InvalidCursor(cursor) from exc
