"""How a job's status changes in SQL: the conditional UPDATE with its event, and fencing.

:func:`move` is the only code that writes ``jobs.status``; :mod:`db.store` calls it for every
transition, so each one is checked against :data:`db.states.TRANSITIONS`, tests the old status
inside the UPDATE and records a ``job_events`` row in the same transaction.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime
from typing import Any, NoReturn

from sqlalchemy import ColumnElement, Connection, Row, String, Text, insert, literal, select, update

from db.errors import InvalidTransition, JobNotFound, StaleAttempt
from db.models import UTCDateTime
from db.queries import EVENTS, JOBS
from db.states import JobStatus, require

EVENT_COLUMNS = ("job_id", "at", "from_status", "to_status", "attempt", "reason")


def move(
    conn: Connection,
    old: JobStatus,
    new: JobStatus,
    where: Sequence[ColumnElement[bool]],
    values: dict[str, Any],
    reason: str,
    now: datetime,
    extra: Sequence[Any] = (),
) -> Sequence[Row[Any]]:
    """The one way a status changes: ``old → new`` (checked against the table) for the rows
    matching ``where`` AND ``status = old``, with one event per moved row, in ``conn``'s
    transaction. Returns the moved rows (id, attempt after the update, ``extra`` columns).

    On PostgreSQL it is a single statement, so it is atomic even in autocommit."""
    require(old, new)
    stmt = (
        update(JOBS)
        .where(JOBS.c.status == old.value, *where)
        .values(status=new.value, updated_at=now, **values)
        .returning(JOBS.c.id, JOBS.c.attempt, *extra)
    )
    if conn.dialect.name == "postgresql":
        # One statement: the UPDATE and the INSERT of its events in data-modifying CTEs
        # (atomic on its own, one round trip).
        moved = stmt.cte("moved")
        events = select(
            moved.c.id, literal(now, UTCDateTime()), literal(old.value, String()),
            literal(new.value, String()), moved.c.attempt, literal(reason, Text()),
        )  # fmt: skip
        logged = insert(EVENTS).from_select(EVENT_COLUMNS, events).cte("logged")
        return conn.execute(select(moved).add_cte(logged)).all()
    rows = conn.execute(stmt).all()
    if rows:
        conn.execute(
            insert(EVENTS),
            [dict(zip(EVENT_COLUMNS, (r.id, now, old.value, new.value, r.attempt, reason),
                      strict=True)) for r in rows],
        )  # fmt: skip
    return rows


def fence(job_id: str, attempt: int) -> list[ColumnElement[bool]]:
    """WHERE terms of a fenced write: the job, still running, still at ``attempt``."""
    return [
        JOBS.c.id == job_id,
        JOBS.c.status == JobStatus.RUNNING.value,
        JOBS.c.attempt == attempt,
    ]


def refuse(conn: Connection, job_id: str, attempt: int, new: JobStatus | None) -> NoReturn:
    """Raise the right error for a refused fenced write: not found, stale, or illegal."""
    current = conn.execute(select(JOBS.c.status, JOBS.c.attempt).where(JOBS.c.id == job_id))
    row = current.first()
    if row is None:
        raise JobNotFound(job_id)
    status, now_attempt = row
    lease_lost = status == JobStatus.QUEUED.value and now_attempt > 0
    if new is None or now_attempt != attempt or lease_lost:
        raise StaleAttempt(job_id, attempt, now_attempt, status)
    raise InvalidTransition(job_id, status, new.value)
