"""The durable job queue: every statement that changes a job lives here.

Guarantees, for SQLite and PostgreSQL alike:

* a submit (one job, or a group in one transaction) writes each new job with its
  ``None → queued`` event in the same transaction, through one insert (:func:`_insert_jobs`);
  an idempotency key makes one job per tenant: the unique constraint
  ``(tenant, idempotency_key)`` decides between concurrent submits, even from other
  processes, and the same key with another spec is refused;
* every status change is declared against :data:`db.states.TRANSITIONS`, checks the old
  status inside its UPDATE (``WHERE id = :id AND status = :old``) and writes a ``job_events``
  row in the same transaction (:func:`move`); a move to a terminal status writes the
  outbox rows of the tenant's webhooks in that transaction too (:mod:`db.webhooks`);
* every write from a worker is fenced: it applies only while ``status = 'running' AND
  attempt = :attempt`` (:func:`fence`), so a zombie attempt cannot overwrite a newer one;
* claims take jobs in the claim order (:data:`db.queries.CLAIM_ORDER`) and lock with
  ``FOR UPDATE SKIP LOCKED`` (PostgreSQL) or hold the write lock (SQLite
  ``BEGIN IMMEDIATE``), so each queued job is claimed by exactly one worker;
* times are computed in Python (UTC) and bound as parameters.

The per-(tenant, priority) counts of ``queue_depth`` follow every write by triggers on
``jobs`` (migration 0003). The read side (get, list, events, counts, queue position) is
:mod:`db.queries`; what a group of submits decides apart from SQL, :mod:`db.submits`.
"""

from __future__ import annotations

import builtins
import functools
from collections.abc import Sequence
from datetime import datetime, timedelta
from typing import Any, NoReturn

from sqlalchemy import (
    ARRAY,
    ColumnElement,
    Connection,
    Engine,
    Row,
    String,
    Text,
    and_,
    bindparam,
    case,
    cast,
    column,
    delete,
    false,
    func,
    insert,
    literal,
    null,
    or_,
    select,
    true,
    update,
)
from sqlalchemy.dialects.postgresql import JSONB
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.dialects.sqlite import insert as sqlite_insert

from core.failures import TRANSIENT, retriable
from core.spec import JobSpec, RetrySpec
from db.errors import InvalidTransition, JobNotFound, StaleAttempt, StoreError
from db.models import EVENTS, JOBS, QUEUE_DEPTH, TRIALS, UTCDateTime, utcnow
from db.queries import (
    CLAIMABLE,
    STOP_REASON_STORE,
    JobQueries,
    claim_key,
    claim_order_by,
    job_scope,
    jobs_by_id,
    keyed_jobs,
    queue_counts,
    ready,
)
from db.session import json_text, one_statement_tx, ping, read_tx, write_tx
from db.states import TERMINAL, JobStatus, StopReason, require
from db.submits import Group, SubmitRequest
from db.views import ClaimedJob, JobView, Submitted
from db.webhooks import OUTBOX_NOW, jobs_outbox, moved_jobs_outbox

# The event reasons of a job ended because its last attempt's lease ran out (the worker lost)
# or its attempt was seen to die: nobody else closes its MLflow run (``lost_runs``).
LOST = "lost"
LOST_CANCELLED = "cancel requested and lease expired"
DIED = "lost: the attempt died"
DIED_CANCELLED = "cancel requested and the attempt died"
SUBMITTED = "submitted"  # the reason of a new job's first event

Q, R = JobStatus.QUEUED, JobStatus.RUNNING
# what a refused stop request names as the status it asked for
_STOPPED_TO = {StopReason.CANCEL: JobStatus.CANCELLED.value, StopReason.PRUNED: "pruned"}


class JobStore(JobQueries):
    """The queue's whole behaviour. Methods are keyword-only and return frozen views."""

    def __init__(self, engine: Engine) -> None:
        self._engine = engine

    def ping(self) -> str:
        """What answered a ``SELECT 1`` (the readiness probe); raises when nothing did."""
        return ping(self._engine)

    def dispose(self) -> None:
        """Close the engine's pooled connections (at the end of the process that made it)."""
        self._engine.dispose()

    # --- submitting ------------------------------------------------------------------------

    def submit(
        self, *, spec: JobSpec, tenant: str = "default", idempotency_key: str | None = None
    ) -> JobView:
        """Queue a job (event None → queued): a group of one (:meth:`submit_many`).
        ``JobView.created`` says whether it is new.

        With an ``idempotency_key``, a second submit by the same tenant with the same spec
        (``spec.hash_fields()``) returns the first job (``created=False``); with a different
        spec it raises :class:`IdempotencyConflict` and changes nothing. Concurrent submits
        with one key make one job (the unique constraint decides).
        """
        request = SubmitRequest(spec, tenant, idempotency_key)
        [answer] = self.submit_many([request], positions=False)
        if isinstance(answer, StoreError):
            raise answer
        return answer.job

    def submit_many(
        self,
        requests: Sequence[SubmitRequest],
        *,
        max_queued: int | None = None,
        positions: bool = True,
    ) -> list[Submitted | StoreError]:
        """Submit a group in ONE transaction (one commit, one fsync where there is one), in
        order; per request, a :class:`Submitted` (the job and, with ``positions``, its queue
        position at commit) or the error that refused it: :class:`IdempotencyConflict`, or
        :class:`QueueFull` when the tenant already has ``max_queued`` queued jobs (earlier
        ones of the group count). A replayed key (in the database or earlier in the group)
        gives the existing job with ``created=False``; a replay is not refused by the quota.
        A request with ``may_exist`` whose ``job_id`` is stored (an earlier try committed it
        unseen) gets that job, as created, and inserts nothing.

        New jobs of one group share one ``created_at``; among themselves the claim order is
        by id, as for any two jobs submitted in the same microsecond. Jobs another process
        commits while the group is written are not counted in its positions (PostgreSQL; on
        SQLite the write lock excludes them).
        """
        keys = [r.key for r in requests if r.key is not None]
        retried = [r.job_id for r in requests if r.may_exist and r.job_id is not None]
        tenants = sorted({r.tenant for r in requests}) if max_queued is not None else []
        priorities = sorted({r.spec.priority for r in requests}) if positions else []
        # nothing to read first: the insert is the whole unit of work (one statement on
        # PostgreSQL, no BEGIN/COMMIT round trips)
        tx = write_tx if keys or tenants or priorities or retried else one_statement_tx
        with tx(self._engine) as conn:
            stored = jobs_by_id(conn, retried) if retried else None
            existing = keyed_jobs(conn, keys)
            queued, before = queue_counts(conn, tenants, priorities)
            # stamped after the counts: every job they saw was committed, so created, before
            # it (on SQLite the write lock is held from here to the commit)
            group = Group(requests, existing, queued, max_queued, utcnow(), stored)
            inserted = _insert_jobs(conn, group.rows)
            taken = group.taken(inserted)
            group.inserted(inserted, keyed_jobs(conn, taken) if taken else {})
            position = functools.partial(self.position, conn)
            return group.answers(before if positions else None, position)

    # --- the worker's side -----------------------------------------------------------------

    def claim(
        self,
        *,
        owner: str,
        limit: int = 1,
        lease_seconds: float,
        ids: Sequence[str] | None = None,
        note: str | None = None,
    ) -> list[ClaimedJob]:
        """Claim up to ``limit`` queued jobs in the claim order (:data:`db.queries.CLAIM_ORDER`:
        highest priority first, then oldest); with ``ids``, only among those (the dispatcher
        claims the jobs it has room for). Returned in that order. ``note``: said in each
        claimed job's event after "claimed by OWNER" (e.g. why a trial trains alone).

        In one statement each becomes running with ``attempt + 1``, the lease (owner, now +
        lease_seconds) and ``started_at``; a queued→running event is written in the same
        transaction. Jobs with ``cancel_requested`` are skipped, and so is a retried job
        before its ``not_before`` (its backoff). Never claims a job twice.
        """
        now = utcnow()
        expires = now + timedelta(seconds=lease_seconds)
        # A materialized CTE: PostgreSQL may re-run a plain ``IN (SELECT ... LIMIT n FOR UPDATE
        # SKIP LOCKED)`` subquery inside an UPDATE and so claim more than ``limit`` rows.
        only = [JOBS.c.id.in_(list(ids))] if ids is not None else []
        picked = (
            select(JOBS.c.id)
            .where(*CLAIMABLE, ready(now), *only)
            .order_by(*claim_order_by())
            .limit(limit)
            .with_for_update(skip_locked=True)
            .cte("picked")
            .prefix_with("MATERIALIZED", dialect="postgresql")
        )
        values = dict(
            attempt=JOBS.c.attempt + 1,
            lease_owner=owner,
            lease_expires_at=expires,
            started_at=now,
            pending_reason=None,
            node=None,
            not_before=None,
        )
        extra = (
            JOBS.c.spec,
            JOBS.c.tenant,
            JOBS.c.priority,
            JOBS.c.created_at,
            JOBS.c.checkpoint_uri,
            JOBS.c.mlflow_run_id,
        )
        with one_statement_tx(self._engine) as conn:
            rows = move(
                conn,
                Q,
                R,
                [JOBS.c.id.in_(select(picked.c.id))],
                values,
                f"claimed by {owner}" + (f"; {note}" if note else ""),
                now,
                extra,
            )
        rows = sorted(rows, key=claim_key)
        return [
            ClaimedJob(
                id=r.id,
                attempt=r.attempt,
                spec=r.spec,
                tenant=r.tenant,
                priority=r.priority,
                lease_expires_at=expires,
                checkpoint_uri=r.checkpoint_uri,
                mlflow_run_id=r.mlflow_run_id,
            )
            for r in rows
        ]

    def heartbeat(
        self,
        *,
        job_id: str,
        attempt: int,
        lease_seconds: float,
        progress: dict[str, Any] | None = None,
        node: str | None = None,
    ) -> bool:
        """Renew the lease of a running attempt and store its progress (if given).

        Fenced: applies only while ``status = 'running' AND attempt = :attempt`` (checked in the
        UPDATE), else :class:`StaleAttempt` / :class:`JobNotFound`. Returns whether a cancel
        was requested, so the attempt can stop between steps.
        """
        now = utcnow()
        values: dict[str, Any] = dict(
            lease_expires_at=now + timedelta(seconds=lease_seconds), updated_at=now
        )
        if progress is not None:
            values["progress"] = progress
        if node is not None:
            values["node"] = node
        return bool(self._fenced_update(job_id, attempt, values, JOBS.c.cancel_requested))

    def heartbeat_many(
        self,
        *,
        beats: Sequence[tuple[str, int, dict[str, Any]]],
        lease_seconds: float,
        node: str | None = None,
    ) -> dict[str, bool]:
        """``heartbeat`` for the running attempts of a pack, in ONE statement: ``beats`` are
        (job id, attempt, progress). Each row is fenced as ``heartbeat`` fences it; returns,
        for each attempt that still holds its job, whether a stop was asked of it. A job
        missing from the answer was refused (its attempt no longer holds it)."""
        if not beats:
            return {}
        now = utcnow()
        kind = JOBS.c.progress.type
        progress = case(
            {job_id: bindparam(None, p, type_=kind) for job_id, _, p in beats},
            value=JOBS.c.id,
            else_=JOBS.c.progress,
        )
        values: dict[str, Any] = dict(
            lease_expires_at=now + timedelta(seconds=lease_seconds),
            updated_at=now,
            progress=progress,
        )
        if node is not None:
            values["node"] = node
        held = or_(*(and_(JOBS.c.id == j, JOBS.c.attempt == a) for j, a, _ in beats))
        with one_statement_tx(self._engine) as conn:
            rows = conn.execute(
                update(JOBS)
                .where(held, JOBS.c.status == JobStatus.RUNNING.value)
                .values(values)
                .returning(JOBS.c.id, JOBS.c.cancel_requested)
            ).all()
        return {job_id: bool(asked) for job_id, asked in rows}

    def set_run(
        self,
        *,
        job_id: str,
        attempt: int,
        mlflow_run_id: str | None = None,
        mlflow_experiment_id: str | None = None,
        checkpoint_uri: str | None = None,
    ) -> None:
        """Record the attempt's MLflow run id (and the run's experiment id, from which the API
        builds the run's link without asking MLflow) and/or latest checkpoint, in one UPDATE;
        fenced like heartbeat."""
        values: dict[str, Any] = {"updated_at": utcnow()}
        if mlflow_run_id is not None:
            values["mlflow_run_id"] = mlflow_run_id
        if mlflow_experiment_id is not None:
            values["mlflow_experiment_id"] = mlflow_experiment_id
        if checkpoint_uri is not None:
            values["checkpoint_uri"] = checkpoint_uri
        self._fenced_update(job_id, attempt, values, JOBS.c.id)

    def release(self, *, job_id: str, attempt: int, why: str) -> JobStatus | None:
        """Settle at once the job of an attempt known to be dead (its Ray task crashed, its
        worker process or node died, or it was killed), as an expired lease would be settled
        a lease later: cancel requested → cancelled; attempts left → queued (the next attempt
        resumes from the checkpoint); none left → failed "lost". The event names ``why``.
        Fenced: returns the new status, or None when the attempt no longer holds the job (it
        finished, or its lease was already settled)."""
        now = utcnow()
        with write_tx(self._engine) as conn:
            for new, rows in self._settle(conn, fence(job_id, attempt), now, died=why):
                if rows:
                    return new
        return None

    def _fenced_update(
        self,
        job_id: str,
        attempt: int,
        values: dict[str, Any],
        returning: Any,
        *,
        refuse_stale: bool = True,
    ) -> Any:
        """One UPDATE of the running ``attempt``'s row (the fence is in its WHERE); returns the
        ``returning`` column, or raises (:func:`refuse`) when the attempt no longer holds the
        job — or returns None with ``refuse_stale=False``."""
        with one_statement_tx(self._engine) as conn:
            found = conn.execute(
                update(JOBS).where(*fence(job_id, attempt)).values(values).returning(returning)
            ).first()
            if found is None:
                if refuse_stale:
                    refuse(conn, job_id, attempt, None)
                return None
        return found[0]

    def finish(
        self,
        *,
        job_id: str,
        attempt: int,
        status: JobStatus | str,
        result: Any = None,
        error: Any = None,
        reason: str | None = None,
        progress: dict[str, Any] | None = None,
    ) -> JobView:
        """End the running ``attempt`` as succeeded, failed or cancelled (fenced).

        A failure of a transient class (``error["type"]``) that the job's ``retry.on`` lists,
        with retries left, goes back to the queue in the same transaction: running → failed
        → queued, two events (the second names the class, the retry and its backoff), the
        error kept and ``not_before`` set (:func:`_retry`). No reader sees that ``failed``.

        Sets ``finished_at``, the result/error, the last ``progress`` (if given: a job shorter
        than a heartbeat interval would otherwise show none), clears the lease, writes an
        event with a reason.
        Refused: :class:`StaleAttempt` if the attempt no longer owns the job,
        :class:`InvalidTransition` if the job is not running (e.g. still queued, or done).
        """
        new = JobStatus(status)
        if new not in TERMINAL:
            raise ValueError(f"finish takes a terminal status, not {new.value}")
        now = utcnow()
        values = dict(
            result=result, error=error, finished_at=now, lease_owner=None, lease_expires_at=None
        )
        if progress is not None:
            values["progress"] = progress
        failed = new is JobStatus.FAILED
        with write_tx(self._engine) as conn:
            rows = move(
                conn,
                R,
                new,
                [JOBS.c.id == job_id, JOBS.c.attempt == attempt],
                values,
                reason or _finish_reason(new, error),
                now,
                (JOBS.c.spec, JOBS.c.retries) if failed else (),
                tell=not failed,  # a failure is told once it is final: not retried
            )
            if not rows:
                refuse(conn, job_id, attempt, new)
            if failed and not _retry(conn, rows[0], error, now):
                tell_jobs(conn, new, rows, now)
            return self.view(conn, job_id)

    # --- cancel, leases, scheduling --------------------------------------------------------

    def request_cancel(self, *, job_id: str, tenant: str | None = None) -> JobView:
        """Cancel a job: :meth:`request_stop` for the reason ``cancel``."""
        return self.request_stop(job_id=job_id, reason=StopReason.CANCEL, tenant=tenant)

    def request_stop(
        self, *, job_id: str, reason: StopReason | str, tenant: str | None = None
    ) -> JobView:
        """Ask a job to stop, for ``reason`` (:class:`StopReason`): the one way a stop is
        requested. The running attempt learns it through the stop signal
        (``workers.stops``) and its heartbeat, stops between two steps and ends the job.

        Every reason sets ``cancel_requested`` (a claim skips the job, a lease that runs out
        ends it cancelled, not queued); a reason other than a cancel is also stored
        (:data:`db.queries.STOP_REASON_STORE`). The first stop asked of a running job is the
        one its attempt gets: a later request, of any reason, changes nothing.

        A cancel: a queued job becomes cancelled at once (event queued → cancelled), a running
        one is asked to stop (idempotent). A prune: only a running job. Otherwise (a finished
        job; a prune of a queued one) :class:`InvalidTransition`. Only conditional UPDATEs:
        safe against a racing claim."""
        why = StopReason(reason)
        now = utcnow()
        scope = job_scope(job_id, tenant)
        running = [*scope, JOBS.c.status == R.value]
        with write_tx(self._engine) as conn:
            for _ in range(5):
                done = why is StopReason.CANCEL and move(
                    conn,
                    Q,
                    JobStatus.CANCELLED,
                    scope,
                    dict(cancel_requested=True, finished_at=now, pending_reason=None),
                    "cancelled before it ran",
                    now,
                )
                values: dict[str, Any] = dict(cancel_requested=True, updated_at=now)
                if why is not StopReason.CANCEL:
                    values[STOP_REASON_STORE.name] = why.value
                flagged = (
                    done
                    or conn.execute(
                        update(JOBS)
                        .where(*running, JOBS.c.cancel_requested == false())
                        .values(values)
                        .returning(JOBS.c.id)
                    ).first()
                )
                if flagged:
                    return self.view(conn, job_id)
                current = conn.execute(select(JOBS.c.status).where(*scope)).scalar()
                if current is None:
                    raise JobNotFound(job_id)
                if current == R.value:  # a stop was asked already: the first one stands
                    return self.view(conn, job_id)
                if current in TERMINAL or why is not StopReason.CANCEL:
                    raise InvalidTransition(job_id, current, _STOPPED_TO[why])
            raise RuntimeError(f"job {job_id} kept changing status while being stopped")

    def requeue_expired(self, *, now: datetime | None = None) -> list[tuple[str, JobStatus]]:
        """Settle running jobs whose lease expired before ``now`` (default: the clock).

        cancel requested → cancelled; attempts left → queued (resumes from its checkpoint);
        ``attempt >= max_attempts`` → failed with reason "lost". One event each.
        """
        now = now or utcnow()
        with write_tx(self._engine) as conn:
            settled = self._settle(conn, [JOBS.c.lease_expires_at < now], now, died=None)
            return [(r.id, new) for new, rows in settled for r in rows]

    @staticmethod
    def _settle(
        conn: Any, where: list[Any], now: datetime, *, died: str | None
    ) -> list[tuple[JobStatus, Sequence[Any]]]:
        """The running jobs matching ``where`` whose attempt is over without an outcome: its
        lease expired (``died`` None) or it is known dead (``died``: why), each moved to
        cancelled, failed "lost" or queued, with one event naming the reason."""
        cleared = dict(lease_owner=None, lease_expires_at=None)
        cancel, keep = JOBS.c.cancel_requested == true(), JOBS.c.cancel_requested == false()
        # the attempts lost leases took: a retry's attempt (``finish``) is not one of them
        spent = JOBS.c.attempt - func.coalesce(JOBS.c.retries, 0) >= JOBS.c.max_attempts
        if died is None:
            message = "lease expired on the last attempt: attempts exhausted"
            reasons = (LOST_CANCELLED, LOST, "lease expired; requeued")
        else:
            message = f"the last attempt died ({died}): attempts exhausted"
            reasons = (DIED_CANCELLED, DIED, f"attempt died ({died}); requeued")
        lost = {"type": "lost", "message": message}
        out: list[tuple[JobStatus, Sequence[Any]]] = []
        for new, extra, values, reason in (
            (JobStatus.CANCELLED, [cancel], dict(finished_at=now, **cleared), reasons[0]),
            (JobStatus.FAILED, [keep, spent], dict(finished_at=now, error=lost, **cleared),
             reasons[1]),
            (Q, [keep, ~spent], dict(node=None, **cleared), reasons[2]),
        ):  # fmt: skip
            out.append((new, move(conn, R, new, where + extra, values, reason, now)))
        return out

    def lost_runs(self, *, since: datetime) -> list[tuple[str, str, JobStatus]]:
        """(job id, MLflow run id, status) of the jobs ended since ``since`` because their last
        attempt's lease ran out or it was seen dead (``requeue_expired``, ``release``: failed
        "lost", or cancelled): the runs a dispatcher closes, and closes again at its start in
        case it stopped before it could."""
        query = (
            select(JOBS.c.id, JOBS.c.mlflow_run_id, JOBS.c.status)
            .join(EVENTS, EVENTS.c.job_id == JOBS.c.id)
            .where(
                JOBS.c.status.in_((JobStatus.FAILED.value, JobStatus.CANCELLED.value)),
                JOBS.c.finished_at >= since,
                JOBS.c.mlflow_run_id.is_not(None),
                EVENTS.c.to_status == JOBS.c.status,
                EVENTS.c.reason.in_((LOST, LOST_CANCELLED, DIED, DIED_CANCELLED)),
            )
            .order_by(JOBS.c.finished_at, JOBS.c.id)
        )
        with read_tx(self._engine) as conn:
            return [(r.id, r.mlflow_run_id, JobStatus(r.status)) for r in conn.execute(query)]

    def fail_queued(self, *, job_id: str, reason: str) -> JobView:
        """queued → failed for a job no node can ever run; the error carries ``reason``."""
        now = utcnow()
        error = {"type": "unschedulable", "message": reason}
        with write_tx(self._engine) as conn:
            if not move(
                conn,
                Q,
                JobStatus.FAILED,
                [JOBS.c.id == job_id],
                dict(error=error, finished_at=now, pending_reason=None),
                reason,
                now,
            ):
                current = self.view(conn, job_id)
                raise InvalidTransition(job_id, current.status.value, JobStatus.FAILED.value)
            return self.view(conn, job_id)

    def set_pending_reason(self, *, job_id: str, reason: str | None) -> bool:
        """Store why a queued job waits (the dispatcher's view); False if it is not queued."""
        with write_tx(self._engine) as conn:
            return (
                conn.execute(
                    update(JOBS)
                    .where(JOBS.c.id == job_id, JOBS.c.status == Q.value)
                    .values(pending_reason=reason)
                    .returning(JOBS.c.id)
                ).first()
                is not None
            )

    # --- retention -------------------------------------------------------------------------

    def delete(self, *, job_id: str, tenant: str | None = None) -> JobView:
        """Remove a finished job (of ``tenant``) and its events; returns the job as it was.
        :class:`JobNotFound` when absent or another tenant's; :class:`InvalidTransition`
        (to "deleted") while it is queued or running, and for a sweep's trial, which its
        sweep keeps. The caller frees its MLflow run first (``api.routes.jobs``)."""
        with write_tx(self._engine) as conn:
            row = conn.execute(select(JOBS).where(*job_scope(job_id, tenant))).mappings().first()
            if row is None:
                raise JobNotFound(job_id)
            job = JobView.from_row(row)
            trial = conn.execute(select(TRIALS.c.sweep_id).where(TRIALS.c.job_id == job_id))
            if job.status not in TERMINAL or trial.first() is not None:
                raise InvalidTransition(job_id, job.status.value, "deleted")
            conn.execute(delete(EVENTS).where(EVENTS.c.job_id == job_id))
            conn.execute(delete(JOBS).where(JOBS.c.id == job_id))
            return job

    def finished_runs(
        self, *, before: datetime, tenant: str | None = None
    ) -> builtins.list[tuple[str, str, str, datetime]]:
        """(job id, tenant, MLflow run id, finished at) of the jobs finished before
        ``before`` that have a run, oldest first: what a retention policy expires."""
        query = (
            select(JOBS.c.id, JOBS.c.tenant, JOBS.c.mlflow_run_id, JOBS.c.finished_at)
            .where(
                JOBS.c.status.in_([s.value for s in TERMINAL]),
                JOBS.c.finished_at < before,
                JOBS.c.mlflow_run_id.is_not(None),
            )
            .order_by(JOBS.c.finished_at, JOBS.c.id)
        )
        if tenant is not None:
            query = query.where(JOBS.c.tenant == tenant)
        with read_tx(self._engine) as conn:
            return [(r.id, r.tenant, r.mlflow_run_id, r.finished_at) for r in conn.execute(query)]

    # --- upkeep ----------------------------------------------------------------------------

    def recount_queue_depth(self) -> dict[tuple[str, int], tuple[int, int]]:
        """Recount ``queue_depth`` from ``jobs`` and correct it; returns ``{(tenant, priority):
        (was, is)}`` for each key that was wrong (empty when all agreed).

        For a table its triggers could not keep: rows restored with triggers disabled
        (``pg_restore --disable-triggers``), a ``TRUNCATE``, a migration that rebuilt ``jobs``.
        A count too high would refuse a tenant's submits (the quota) until corrected. Writers
        wait for the recount: PostgreSQL takes a SHARE ROW EXCLUSIVE lock on ``jobs``, SQLite
        its write lock."""
        c, d = JOBS.c, QUEUE_DEPTH.c
        with write_tx(self._engine) as conn:
            if conn.dialect.name == "postgresql":
                conn.exec_driver_sql("LOCK TABLE jobs IN SHARE ROW EXCLUSIVE MODE")
            claimable = select(c.tenant, c.priority, func.count()).where(*CLAIMABLE)
            rows = conn.execute(claimable.group_by(c.tenant, c.priority))
            truth = {(t, p): int(n) for t, p, n in rows}
            kept = {
                (t, p): int(q) for t, p, q in conn.execute(select(d.tenant, d.priority, d.queued))
            }
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


def _retry(conn: Connection, row: Row[Any], error: Any, now: datetime) -> bool:
    """failed → queued for the job just failed (``row``: its id, spec and retries) when its
    error's class is one its ``spec.retry`` retries and it has retries left: ``retries`` + 1,
    ``not_before`` after the backoff, the event and the pending reason saying which class,
    why, and when it may run again. Whether it went back to the queue."""
    kind = error.get("type") if isinstance(error, dict) else None
    policy = (row.spec or {}).get("retry")
    done = row.retries or 0
    if not policy or not retriable(kind, policy.get("on", [])) or done >= policy["max"]:
        return False
    spec = RetrySpec.model_validate(policy)
    at = now + timedelta(seconds=spec.delay(done))
    message = str(error.get("message", ""))[:300]
    why = f"retry {done + 1} of {spec.max} after {kind} ({TRANSIENT[str(kind)]}): {message}"
    why += f"; not before {at.isoformat(timespec='seconds')}"
    values = dict(retries=done + 1, not_before=at, finished_at=None, pending_reason=why)
    kept = [JOBS.c.id == row.id, JOBS.c.cancel_requested == false()]  # a cancel stands
    return bool(move(conn, JobStatus.FAILED, Q, kept, values, why, now))


def _finish_reason(status: JobStatus, error: Any) -> str:
    if status is JobStatus.FAILED and error is not None:
        message = error.get("message", error) if isinstance(error, dict) else error
        return f"failed: {str(message)[:500]}"
    return {
        JobStatus.SUCCEEDED: "succeeded",
        JobStatus.CANCELLED: "cancelled on request",
        JobStatus.PRUNED: "pruned: below its rung's cut (its sweep's early stopping)",
    }.get(status, status.value)


# --- how a status changes: the conditional UPDATE with its event, and fencing ---------------

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
    tell: bool = True,
) -> Sequence[Row[Any]]:
    """The one way a status changes: ``old → new`` (checked against the table) for the rows
    matching ``where`` AND ``status = old``, with one event per moved row, in ``conn``'s
    transaction; a terminal move also writes its webhooks' outbox rows there
    (:func:`db.webhooks.outbox_insert`) unless ``tell`` is False (a failure its caller may
    still retry: it tells it with :func:`tell_jobs` once it is final). Returns the moved
    rows (id, attempt after the update, ``extra`` columns, and the tenant of a terminal
    move).

    The only code that writes ``jobs.status`` once a job exists. On PostgreSQL it is a
    single statement, so it is atomic even in autocommit."""
    require(old, new)
    terminal = new in TERMINAL
    told = terminal and tell  # a terminal move is told to the tenant's webhooks (db.webhooks)
    returned = (JOBS.c.id, JOBS.c.attempt, *extra)
    if terminal and not any(c is JOBS.c.tenant for c in extra):
        returned += (JOBS.c.tenant,)
    stmt = (
        update(JOBS)
        .where(JOBS.c.status == old.value, *where)
        .values(status=new.value, updated_at=now, **values)
        .returning(*returned)
    )
    if conn.dialect.name == "postgresql":
        # One statement: the UPDATE and the INSERT of its events (and of its webhooks'
        # outbox rows) in data-modifying CTEs (atomic on its own, one round trip).
        moved = stmt.cte("moved")
        events = select(
            moved.c.id, literal(now, UTCDateTime()), literal(old.value, String()),
            literal(new.value, String()), moved.c.attempt, literal(reason, Text()),
        )  # fmt: skip
        logged = insert(EVENTS).from_select(EVENT_COLUMNS, events).cte("logged")
        query = select(moved).add_cte(logged)
        if told:
            query = query.add_cte(moved_jobs_outbox(new.value))
        return conn.execute(query, {OUTBOX_NOW: now}).all()
    rows = conn.execute(stmt).all()
    if rows:
        conn.execute(
            insert(EVENTS),
            [dict(zip(EVENT_COLUMNS, (r.id, now, old.value, new.value, r.attempt, reason),
                      strict=True)) for r in rows],
        )  # fmt: skip
        if told:
            tell_jobs(conn, new, rows, now)
    return rows


def tell_jobs(conn: Connection, status: JobStatus, rows: Sequence[Row[Any]], now: datetime) -> None:
    """Write the webhooks' outbox rows of the jobs ``rows`` (id, tenant) that ended
    ``status``, in ``conn``'s transaction."""
    conn.execute(
        jobs_outbox(status.value),
        [{OUTBOX_NOW: now, "outbox_id": r.id, "outbox_tenant": r.tenant} for r in rows],
    )


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


# --- the one insert of new jobs ------------------------------------------------------------

ROW_COLUMNS = (
    "id",
    "tenant",
    "name",
    "spec",
    "priority",
    "max_attempts",
    "idempotency_key",
    "origin_job_id",
)
"""The columns a new job sets that differ between the jobs of a group."""
GROUP_COLUMNS = ("status", "attempt", "cancel_requested", "created_at", "updated_at")
"""The columns a new job sets that are the same for every job of a group: queued, attempt 0,
no cancel requested, the group's instant."""
INSERTED_COLUMNS = ROW_COLUMNS + GROUP_COLUMNS
"""What a new job's row sets; the other columns start NULL. Binding only these, about half of
the columns, halves the per-row parameter processing of a group's insert, which is Python
work on the one writer thread (bench/RESULTS.md, API)."""


def _insert_jobs(conn: Connection, rows: list[dict[str, Any]]) -> set[str]:
    """Insert new jobs (rows of :func:`db.submits.new_job`, one group: the same
    ``GROUP_COLUMNS``) and the submit event of each one inserted; the ids inserted. A job
    whose key another insert took is left out (``ON CONFLICT DO NOTHING`` on the tenant's
    key, which waits for a concurrent insert of that key to end)."""
    if not rows:
        return set()
    if conn.dialect.name == "postgresql":
        params = {c: [row[c] for row in rows] for c in ROW_COLUMNS}
        params["spec"] = [json_text(row["spec"]) for row in rows]
        params.update({c: rows[0][c] for c in GROUP_COLUMNS})
        return {r[0] for r in conn.execute(_insert_statement_pg(), params)}
    values = [{c: row[c] for c in INSERTED_COLUMNS} for row in rows]
    inserted = {r[0] for r in conn.execute(_insert_statement_sqlite(), values)}
    events = [
        dict(job_id=row["id"], at=row["created_at"], from_status=None, to_status=row["status"],
             attempt=row["attempt"], reason=SUBMITTED)
        for row in rows if row["id"] in inserted
    ]  # fmt: skip
    if events:
        conn.execute(insert(EVENTS), events)
    return inserted


@functools.cache
def _insert_statement_pg() -> Any:
    """PostgreSQL: the group's jobs and their events in one statement whose text does not
    depend on the group's size: each of ``ROW_COLUMNS`` bound as one array, ``unnest``-ed
    into rows, each of ``GROUP_COLUMNS`` bound once. SQLAlchemy's multi-row ``INSERT …
    VALUES (…), (…)`` is a new text for each group size, longer than psycopg caches, so
    psycopg would parse it again in Python for every group (bench/RESULTS.md, API); the
    arrays go in binary (:func:`db.session.make_engine`). As one statement, the queue
    counters' statement trigger locks its keys once, in key order; RETURNING names the jobs
    inserted (those that have an event)."""
    types = {c: Text() if c == "spec" else JOBS.c[c].type for c in ROW_COLUMNS}
    new = (
        func.unnest(*(bindparam(c, type_=ARRAY(t)) for c, t in types.items()))
        .table_valued(*(column(c, t) for c, t in types.items()))
        .render_derived("new")
    )
    shared = {c: bindparam(c, type_=JOBS.c[c].type) for c in GROUP_COLUMNS}
    values = [cast(new.c[c], JSONB) if c == "spec" else new.c[c] for c in ROW_COLUMNS]
    job = (
        pg_insert(JOBS)
        .from_select(INSERTED_COLUMNS, select(*values, *shared.values()))
        .on_conflict_do_nothing(index_elements=[JOBS.c.tenant, JOBS.c.idempotency_key])
        .returning(JOBS.c.id)
        .cte("job")
    )
    event = select(
        job.c.id, shared["created_at"], null(), shared["status"], shared["attempt"],
        literal(SUBMITTED, Text()),
    )  # fmt: skip
    return insert(EVENTS).from_select(EVENT_COLUMNS, event).returning(EVENTS.c.job_id)


@functools.cache
def _insert_statement_sqlite() -> Any:
    """SQLite: the group's jobs (SQLAlchemy sends the rows in multi-row batches); their
    events follow in a statement of their own."""
    return (
        sqlite_insert(JOBS)
        .on_conflict_do_nothing(index_elements=[JOBS.c.tenant, JOBS.c.idempotency_key])
        .returning(JOBS.c.id)
    )
