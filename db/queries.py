"""The read side of the job queue: get, list (cursor pages), events, counts, queue position.

Mixed into :class:`db.store.JobStore`; the statements that change jobs are in :mod:`db.store`.
"""

from __future__ import annotations

import base64
import builtins
import json
from datetime import UTC, datetime
from typing import cast

from sqlalchemy import ColumnElement, Connection, Engine, Table, and_, false, func, or_, select

from db.errors import InvalidCursor, JobNotFound
from db.models import Job, JobEvent, QueueDepth
from db.session import read_tx
from db.states import JobStatus
from db.views import EventView, JobView

JOBS = cast(Table, Job.__table__)
EVENTS = cast(Table, JobEvent.__table__)
QUEUE_DEPTH = cast(Table, QueueDepth.__table__)
Q = JobStatus.QUEUED


class JobQueriesMixin:
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
    ) -> tuple[builtins.list[JobView], str | None]:
        """One page of jobs, newest first (created_at desc, id desc), and the cursor of the
        next page (None on the last). Walking the cursors visits every row exactly once."""
        query = select(JOBS).order_by(JOBS.c.created_at.desc(), JOBS.c.id.desc())
        if tenant is not None:
            query = query.where(JOBS.c.tenant == tenant)
        if status is not None:
            query = query.where(JOBS.c.status == JobStatus(status).value)
        if name is not None:
            query = query.where(JOBS.c.name == name)
        if cursor is not None:
            at, last_id = _decode_cursor(cursor)
            query = query.where(
                or_(JOBS.c.created_at < at, and_(JOBS.c.created_at == at, JOBS.c.id < last_id))
            )
        with read_tx(self._engine) as conn:
            rows = conn.execute(query.limit(limit + 1)).mappings().all()
        page = [JobView.from_row(r) for r in rows[:limit]]
        more = len(rows) > limit
        return page, _encode_cursor(page[-1].created_at, page[-1].id) if more else None

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

    def count_queued(self, *, tenant: str | None = None) -> int:
        """Queued jobs (of ``tenant``): one count over the claim index, whatever the history."""
        query = select(func.count()).where(JOBS.c.status == Q.value)
        if tenant is not None:
            query = query.where(JOBS.c.tenant == tenant)
        with read_tx(self._engine) as conn:
            return int(conn.execute(query).scalar_one())

    def next_queued(self, *, limit: int = 16) -> builtins.list[JobView]:
        """The queued jobs a claim would take next, in claim order (highest priority, then
        oldest); read-only: the dispatcher looks at their resources before claiming."""
        c = JOBS.c
        query = (
            select(JOBS)
            .where(c.status == Q.value, c.cancel_requested == false())
            .order_by(c.priority.desc(), c.created_at, c.id)
            .limit(limit)
        )
        with read_tx(self._engine) as conn:
            return [JobView.from_row(r) for r in conn.execute(query).mappings()]

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

    # --- helpers ---------------------------------------------------------------------------

    @staticmethod
    def view(conn: Connection, job_id: str) -> JobView:
        """The job as seen inside ``conn``'s transaction; :class:`JobNotFound` if absent."""
        row = conn.execute(select(JOBS).where(JOBS.c.id == job_id)).mappings().first()
        if row is None:
            raise JobNotFound(job_id)
        return JobView.from_row(row)

    @staticmethod
    def position(conn: Connection, job: JobView) -> int | None:
        """Queued jobs a claim takes before ``job`` (claim order); None if not queued."""
        if job.status is not Q:
            return None
        c, d, p, at = JOBS.c, QUEUE_DEPTH.c, job.priority, job.created_at
        queued = (c.status == Q.value, c.cancel_requested == false())
        # higher priorities from the per-(tenant, priority) counters (migration 0003); the
        # job's own priority: two ranges of the queue index (status, cancel_requested,
        # priority, created_at, id), as long as the jobs ahead of it at that priority
        higher = select(func.coalesce(func.sum(d.queued), 0)).where(d.priority > p)
        ranges = (
            (c.priority == p, c.created_at < at),
            (c.priority == p, c.created_at == at, c.id < job.id),
        )
        counts = [select(func.count()).where(*queued, *r).scalar_subquery() for r in ranges]
        ahead = select(higher.scalar_subquery() + counts[0] + counts[1])
        return int(conn.execute(ahead).scalar_one())


def job_scope(job_id: str, tenant: str | None) -> builtins.list[ColumnElement[bool]]:
    """WHERE terms selecting the job, and only if it belongs to ``tenant`` (when given)."""
    where = [JOBS.c.id == job_id]
    return where if tenant is None else [*where, JOBS.c.tenant == tenant]


def _encode_cursor(at: datetime, job_id: str) -> str:
    raw = json.dumps([at.astimezone(UTC).isoformat(), job_id]).encode()
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")


def _decode_cursor(cursor: str) -> tuple[datetime, str]:
    try:
        raw = base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4))
        at, job_id = json.loads(raw)
        return datetime.fromisoformat(at), str(job_id)
    except (ValueError, TypeError) as exc:
        raise InvalidCursor(cursor) from exc
