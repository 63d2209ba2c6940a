"""Submitting jobs: one at a time (:meth:`SubmitMixin.submit`), or a group of concurrent
submits in one transaction (:meth:`SubmitMixin.submit_many`, the API's group commit).

Mixed into :class:`db.store.JobStore`. Both keep the same guarantees: each new job is written
with its ``None → queued`` event in one transaction; an idempotency key makes one job per
tenant (the unique constraint ``(tenant, idempotency_key)`` decides between concurrent
submits, even from other processes); the same key with another spec is refused.
"""

from __future__ import annotations

import functools
import uuid
from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import (
    Connection,
    Engine,
    Integer,
    bindparam,
    delete,
    false,
    func,
    insert,
    select,
)
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.dialects.sqlite import insert as sqlite_insert
from sqlalchemy.exc import IntegrityError

from core.spec import JobSpec
from db.errors import IdempotencyConflict, QueueFull, StoreError
from db.models import utcnow
from db.queries import EVENTS, JOBS, QUEUE_DEPTH, JobQueriesMixin
from db.session import json_text, one_statement_tx, read_tx, write_tx
from db.states import JobStatus
from db.views import JobView, Submitted

Q = JobStatus.QUEUED


@dataclass(frozen=True)
class SubmitRequest:
    """One submit of a group (:meth:`SubmitMixin.submit_many`)."""

    spec: JobSpec
    tenant: str = "default"
    idempotency_key: str | None = None


class SubmitMixin(JobQueriesMixin):
    """The submit side of :class:`db.store.JobStore`."""

    _engine: Engine

    def submit(
        self, *, spec: JobSpec, tenant: str = "default", idempotency_key: str | None = None
    ) -> JobView:
        """Queue a job (event None → queued); ``JobView.created`` says whether it is new.

        With an ``idempotency_key``, a second submit by the same tenant with the same spec
        (``spec.hash_fields()``) returns the first job (``created=False``); with a different
        spec it raises :class:`IdempotencyConflict` and changes nothing. Concurrent submits
        with one key make one job (the unique constraint decides).
        """
        now = utcnow()
        row = _job_row(spec, tenant, idempotency_key, now)
        event = _event_row(row["id"], now)
        if self._engine.dialect.name == "postgresql":
            inserted = _insert_job_pg(self._engine, row, event)
        else:
            inserted = _insert_job(self._engine, row, event, idempotency_key)
        if not inserted:
            if idempotency_key is None:
                raise RuntimeError(f"job id {row['id']} collided")  # a uuid4 collision
            with read_tx(self._engine) as conn:
                existing = _by_key(conn, tenant, idempotency_key)
            if existing is None:
                raise RuntimeError(f"idempotency key {idempotency_key!r} taken but not found")
            return _replay(existing, spec, idempotency_key)
        return JobView.from_row(row, created=True)

    def submit_many(
        self, requests: Sequence[SubmitRequest], *, max_queued: int | None = None
    ) -> list[Submitted | StoreError]:
        """Submit a group in ONE transaction (one commit, one fsync where there is one), in
        order; per request, a :class:`Submitted` (the job and its queue position at commit)
        or the error that refused it: :class:`IdempotencyConflict`, or :class:`QueueFull`
        when the tenant already has ``max_queued`` queued jobs (earlier ones of the group
        count). A replayed key (in the database or earlier in the group) gives the existing
        job with ``created=False``; a replay is not refused by the quota.

        New jobs of one group share one ``created_at``; among themselves the claim order is
        by id, as for any two jobs submitted in the same microsecond.
        """
        out: list[Submitted | StoreError | None] = [None] * len(requests)
        tenants = sorted({r.tenant for r in requests}) if max_queued is not None else []
        priorities = sorted({r.spec.priority for r in requests})
        with write_tx(self._engine) as conn:
            existing = _existing_keys(conn, requests)
            queued, before = _counts(conn, tenants, priorities)
            # stamped after the counts: every job they saw was committed, so created, before
            # it (on SQLite the write lock is held from here to the commit)
            now = utcnow()
            rows: list[dict[str, Any]] = []
            first_of_key: dict[tuple[str, str], int] = {}  # → index in requests
            later: list[int] = []  # repeats of a key that is new in this group
            for i, r in enumerate(requests):
                key = (r.tenant, r.idempotency_key) if r.idempotency_key is not None else None
                if key is not None and key in existing:
                    out[i] = _replayed(existing[key], r)
                    continue
                if key is not None and key in first_of_key:
                    later.append(i)
                    continue
                if max_queued is not None:
                    if queued[r.tenant] >= max_queued:
                        out[i] = QueueFull(r.tenant, queued[r.tenant], max_queued)
                        continue
                    queued[r.tenant] += 1
                if key is not None:
                    first_of_key[key] = i
                rows.append(_job_row(r.spec, r.tenant, r.idempotency_key, now) | {"_i": i})
            inserted = _insert_rows(conn, rows)
            new: list[JobView] = []
            for row in rows:
                i = row.pop("_i")
                r = requests[i]
                if row["id"] in inserted:
                    new.append(JobView.from_row(row, created=True))
                    out[i] = Submitted(new[-1], None)  # its position: below
                    if r.idempotency_key is not None:
                        existing[(r.tenant, r.idempotency_key)] = row
                    continue
                if r.idempotency_key is None:
                    raise RuntimeError(f"job id {row['id']} collided")  # a uuid4 collision
                # another process took the key after _existing_keys looked (PostgreSQL)
                found = _by_key(conn, r.tenant, r.idempotency_key)
                if found is None:
                    raise RuntimeError(f"idempotency key {r.idempotency_key!r} lost")
                existing[(r.tenant, r.idempotency_key)] = found
                out[i] = _replayed(found, r)
            for i in later:
                r = requests[i]
                out[i] = _replayed(existing[(r.tenant, str(r.idempotency_key))], r)
            positions = _positions(new, before)
            answers: list[Submitted | StoreError] = []
            for o in out:
                assert o is not None
                if isinstance(o, Submitted):  # a replay: counted after the group's inserts
                    at = positions.get(o.job.id) if o.job.created else self.position(conn, o.job)
                    o = Submitted(o.job, at)
                answers.append(o)
        return answers


def _job_row(spec: JobSpec, tenant: str, key: str | None, now: datetime) -> dict[str, Any]:
    return dict(
        id=str(uuid.uuid4()),
        tenant=tenant,
        name=spec.name,
        spec=spec.model_dump(mode="json"),
        status=Q.value,
        priority=spec.priority,
        attempt=0,
        max_attempts=spec.max_attempts,
        lease_owner=None,
        lease_expires_at=None,
        cancel_requested=False,
        progress=None,
        result=None,
        error=None,
        mlflow_run_id=None,
        mlflow_experiment_id=None,
        checkpoint_uri=None,
        node=None,
        pending_reason=None,
        idempotency_key=key,
        created_at=now,
        started_at=None,
        finished_at=None,
        updated_at=now,
    )


# What a new job's row sets; the other columns start NULL. Binding only these, about half of
# the columns, halves the per-row parameter processing of a group's insert, which is Python
# work on the one writer thread (bench/RESULTS.md, API).
INSERTED_COLUMNS = (
    "id",
    "tenant",
    "name",
    "spec",
    "status",
    "priority",
    "attempt",
    "max_attempts",
    "cancel_requested",
    "idempotency_key",
    "created_at",
    "updated_at",
)


def _event_row(job_id: str, now: datetime) -> dict[str, Any]:
    return dict(
        job_id=job_id, at=now, from_status=None, to_status=Q.value, attempt=0, reason="submitted"
    )


def _existing_keys(
    conn: Connection, requests: Sequence[SubmitRequest]
) -> dict[tuple[str, str], Any]:
    """The rows that already hold the group's idempotency keys: one query per tenant."""
    keys: dict[str, set[str]] = defaultdict(set)
    for r in requests:
        if r.idempotency_key is not None:
            keys[r.tenant].add(r.idempotency_key)
    found: dict[tuple[str, str], Any] = {}
    for tenant, names in keys.items():
        rows = conn.execute(_by_keys_statement(), {"tenant": tenant, "keys": sorted(names)})
        for row in rows.mappings():
            found[(tenant, row["idempotency_key"])] = row
    return found


def _counts(
    conn: Connection, tenants: list[str], priorities: list[int]
) -> tuple[dict[str, int], dict[int, int]]:
    """One SELECT before the group's inserts, on ``queue_depth`` (kept by triggers, migration
    0003): each tenant's queued jobs (the quota) and, per priority, the queued jobs of that
    priority or higher — each committed before the group's ``created_at``, which is taken
    after this read, so a claim takes them first. Jobs another process commits between this
    read and the group's commit are not counted (PostgreSQL; on SQLite the write lock
    excludes them). Its cost is the table's size (tenants × priorities), not the queue's
    length."""
    params: dict[str, Any] = {f"t{n}": t for n, t in enumerate(tenants)}
    params.update({f"p{n}": p for n, p in enumerate(priorities)})
    counts = conn.execute(_counts_statement(len(tenants), len(priorities)), params).one()
    queued = {t: int(counts[n]) for n, t in enumerate(tenants)}
    before = {p: int(counts[len(tenants) + n]) for n, p in enumerate(priorities)}
    return queued, before


def recount_queue_depth(engine: Engine) -> dict[tuple[str, int], tuple[int, int]]:
    """Recount ``queue_depth`` from ``jobs`` and correct it; returns ``{(tenant, priority):
    (was, is)}`` for each key that was wrong (empty when all agreed).

    For a table its triggers could not keep: rows restored with triggers disabled
    (``pg_restore --disable-triggers``), a ``TRUNCATE``, a migration that rebuilt ``jobs``.
    A count too high would refuse a tenant's submits (the quota) until corrected. Writers wait
    for the recount: PostgreSQL takes a SHARE ROW EXCLUSIVE lock on ``jobs``, SQLite its
    write lock."""
    c, d = JOBS.c, QUEUE_DEPTH.c
    with write_tx(engine) as conn:
        if conn.dialect.name == "postgresql":
            conn.exec_driver_sql("LOCK TABLE jobs IN SHARE ROW EXCLUSIVE MODE")
        claimable = select(c.tenant, c.priority, func.count()).where(
            c.status == Q.value, c.cancel_requested == false()
        )
        rows = conn.execute(claimable.group_by(c.tenant, c.priority))
        truth = {(t, p): int(n) for t, p, n in rows}
        kept = {(t, p): int(q) for t, p, q in conn.execute(select(d.tenant, d.priority, d.queued))}
        changed = {
            key: (kept.get(key, 0), truth.get(key, 0))
            for key in truth.keys() | kept.keys()
            if kept.get(key, 0) != truth.get(key, 0)
        }
        if changed:
            conn.execute(delete(QUEUE_DEPTH))
            if truth:
                conn.execute(
                    insert(QUEUE_DEPTH),
                    [dict(tenant=t, priority=p, queued=n) for (t, p), n in truth.items()],
                )
    return changed


@functools.cache
def _counts_statement(tenants: int, priorities: int) -> Any:
    """Built once per shape (number of tenants and of priorities in a group); values bound."""
    d = QUEUE_DEPTH.c
    total = func.coalesce(func.sum(d.queued), 0)
    columns: list[Any] = [
        select(total).where(d.tenant == bindparam(f"t{n}")).scalar_subquery()
        for n in range(tenants)
    ]
    columns += [
        select(total).where(d.priority >= bindparam(f"p{n}", type_=Integer)).scalar_subquery()
        for n in range(priorities)
    ]
    return select(*columns)


def _insert_rows(conn: Connection, rows: list[dict[str, Any]]) -> set[str]:
    """Insert the jobs (one multi-row INSERT … ON CONFLICT DO NOTHING on the tenant's key)
    and the events of those inserted; the ids inserted. PostgreSQL: ``_insert_rows_pg``."""
    if not rows:
        return set()
    if conn.dialect.name == "postgresql":
        return _insert_rows_pg(conn, rows)
    values = [{c: row[c] for c in INSERTED_COLUMNS} for row in rows]
    inserted = {r[0] for r in conn.execute(_insert_jobs_statement(), values)}
    events = [_event_row(row["id"], row["created_at"]) for row in rows if row["id"] in inserted]
    if events:
        conn.execute(_insert_events_statement(), events)
    return inserted


def _insert_rows_pg(conn: Connection, rows: list[dict[str, Any]]) -> set[str]:
    """PostgreSQL: the jobs and their events in one statement whose text does not depend on
    the group's size: each column's values as one array, ``unnest``-ed into rows
    (``_PG_SUBMIT``). SQLAlchemy's multi-row ``INSERT … VALUES (…), (…)`` is a new text for
    each group size, longer than psycopg caches, so psycopg would parse it again in Python for
    every group, a sizeable part of the server's CPU per submit (bench/RESULTS.md, API). It is
    one statement, so the queue counters' statement trigger locks its keys once, in key order;
    ``ON CONFLICT DO NOTHING`` leaves out a job whose key a concurrent insert took; RETURNING
    names those inserted."""
    columns = [[row[c] for row in rows] for c in INSERTED_COLUMNS]
    columns[INSERTED_COLUMNS.index("spec")] = [json_text(row["spec"]) for row in rows]
    at = rows[0]["created_at"]
    assert all(row["created_at"] is at for row in rows), "a group has one created_at"
    result = conn.exec_driver_sql(_PG_SUBMIT, (*columns, at))
    return {r[0] for r in result}


_PG_TYPES = {  # INSERTED_COLUMNS' array types
    "priority": "integer",
    "attempt": "integer",
    "max_attempts": "integer",
    "cancel_requested": "boolean",
    "created_at": "timestamptz",
    "updated_at": "timestamptz",
    "spec": "text",
}
_PG_SUBMIT = (
    "WITH job AS (INSERT INTO jobs ({cols}) SELECT {select} FROM unnest({arrays}) AS t({cols}) "
    "ON CONFLICT (tenant, idempotency_key) DO NOTHING RETURNING id) "
    "INSERT INTO job_events (job_id, at, from_status, to_status, attempt, reason) "
    "SELECT id, %b, NULL, '{queued}', 0, 'submitted' FROM job RETURNING job_id"
).format(
    cols=", ".join(INSERTED_COLUMNS),
    select=", ".join(f"{c}::jsonb" if c == "spec" else c for c in INSERTED_COLUMNS),
    arrays=", ".join(f"%b::{_PG_TYPES.get(c, 'text')}[]" for c in INSERTED_COLUMNS),
    queued=Q.value,
)


@functools.cache
def _insert_jobs_statement() -> Any:
    """SQLite's group insert (PostgreSQL's is ``_PG_SUBMIT``)."""
    return (
        sqlite_insert(JOBS)
        .on_conflict_do_nothing(index_elements=[JOBS.c.tenant, JOBS.c.idempotency_key])
        .returning(JOBS.c.id)
    )


@functools.cache
def _insert_events_statement() -> Any:
    return insert(EVENTS)


@functools.cache
def _by_keys_statement() -> Any:
    return select(JOBS).where(
        JOBS.c.tenant == bindparam("tenant"),
        JOBS.c.idempotency_key.in_(bindparam("keys", expanding=True)),
    )


def _positions(new: list[JobView], before: dict[int, int]) -> dict[str, int]:
    """Queue positions of the group's new jobs (all created at the same ``now``): the queued
    jobs counted before the inserts (``before``), plus the group's own jobs that a claim
    takes first (a higher priority; the same priority and a smaller id)."""
    out: dict[str, int] = {}
    for job in new:
        ahead = sum(
            1
            for other in new
            if other.priority > job.priority
            or (other.priority == job.priority and other.id < job.id)
        )
        out[job.id] = before[job.priority] + ahead
    return out


def _replayed(existing: Any, r: SubmitRequest) -> Submitted | StoreError:
    """The answer to a replayed key: the existing job (its position is filled in later)."""
    assert r.idempotency_key is not None
    try:
        return Submitted(_replay(existing, r.spec, r.idempotency_key), None)
    except IdempotencyConflict as exc:
        return exc


def _insert_job(
    engine: Engine, row: dict[str, Any], event: dict[str, Any], key: str | None
) -> bool:
    """SQLite: insert the job and its event under the write lock; False if the key is taken."""
    try:
        with write_tx(engine) as conn:
            if key is not None and _by_key(conn, row["tenant"], key) is not None:
                return False
            conn.execute(insert(JOBS), row)
            conn.execute(insert(EVENTS), event)
    except IntegrityError:
        if key is None:
            raise
        return False
    return True


def _insert_job_pg(engine: Engine, row: dict[str, Any], event: dict[str, Any]) -> bool:
    """PostgreSQL: one autocommit statement inserts the job (``ON CONFLICT DO NOTHING`` on
    the tenant's key, which waits for a concurrent insert of the same key) and its event.
    False when the key was already taken."""
    params = {**row, **{f"event_{k}": v for k, v in event.items() if k != "job_id"}}
    with one_statement_tx(engine) as conn:
        return conn.execute(_submit_statement_pg(), params).first() is not None


@functools.cache
def _submit_statement_pg() -> Any:
    """Built once: bound parameters are the job's columns and ``event_<column>``."""
    job = (
        pg_insert(JOBS)
        .values({c.name: bindparam(c.name, type_=c.type) for c in JOBS.c})
        .on_conflict_do_nothing(index_elements=[JOBS.c.tenant, JOBS.c.idempotency_key])
        .returning(JOBS.c.id)
        .cte("job")
    )
    names = ["at", "from_status", "to_status", "attempt", "reason"]
    values = select(job.c.id, *(bindparam(f"event_{n}", type_=EVENTS.c[n].type) for n in names))
    return insert(EVENTS).from_select(["job_id", *names], values).returning(EVENTS.c.job_id)


def _by_key(conn: Connection, tenant: str, key: str) -> Any:
    query = select(JOBS).where(JOBS.c.tenant == tenant, JOBS.c.idempotency_key == key)
    return conn.execute(query).mappings().first()


def _replay(existing: Any, spec: JobSpec, key: str) -> JobView:
    try:
        same = JobSpec.model_validate(existing["spec"]).hash_fields() == spec.hash_fields()
    except ValueError:
        same = False
    if not same:
        raise IdempotencyConflict(key, existing["id"])
    return JobView.from_row(existing, created=False)
