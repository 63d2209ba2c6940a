"""The durable job queue: every statement that changes a job lives here.

Guarantees, for SQLite and PostgreSQL alike:

* every status change is declared against :data:`db.states.TRANSITIONS`, checks the old
  status inside its UPDATE (``WHERE id = :id AND status = :old``) and writes a ``job_events``
  row in the same transaction (:func:`_move`);
* every write from a worker is fenced: it applies only while ``status = 'running' AND
  attempt = :attempt``, so a zombie attempt cannot overwrite a newer one;
* claims lock with ``FOR UPDATE SKIP LOCKED`` (PostgreSQL) or hold the write lock
  (SQLite ``BEGIN IMMEDIATE``), so each queued job is claimed by exactly one worker;
* times are computed in Python (UTC) and bound as parameters.

Submitting (one job, or a group in one transaction) is in :mod:`db.submits`; the read side
(get, list, events, counts, queue position) is in :mod:`db.queries`.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import Engine, false, select, true, update

from db.errors import InvalidTransition, JobNotFound
from db.models import utcnow
from db.queries import EVENTS, JOBS, JobQueriesMixin, job_scope
from db.session import one_statement_tx, ping, read_tx, write_tx
from db.states import TERMINAL, JobStatus
from db.submits import SubmitMixin
from db.transitions import fence, move, refuse
from db.views import ClaimedJob, JobView

# The event reasons of a job ended because its last attempt's lease ran out (the worker lost)
# or its attempt was seen to die: nobody else closes its MLflow run (``lost_runs``).
LOST = "lost"
LOST_CANCELLED = "cancel requested and lease expired"
DIED = "lost: the attempt died"
DIED_CANCELLED = "cancel requested and the attempt died"

Q, R = JobStatus.QUEUED, JobStatus.RUNNING


class JobStore(SubmitMixin, JobQueriesMixin):
    """The queue's whole behaviour. Methods are keyword-only and return frozen views."""

    def __init__(self, engine: Engine) -> None:
        self._engine = engine

    def ping(self) -> str:
        """What answered a ``SELECT 1`` (the readiness probe); raises when nothing did."""
        return ping(self._engine)

    def dispose(self) -> None:
        """Close the engine's pooled connections (at the end of the process that made it)."""
        self._engine.dispose()

    # --- the worker's side -----------------------------------------------------------------

    def claim(
        self,
        *,
        owner: str,
        limit: int = 1,
        lease_seconds: float,
        ids: Sequence[str] | None = None,
    ) -> list[ClaimedJob]:
        """Claim up to ``limit`` queued jobs, highest priority first, then oldest; with
        ``ids``, only among those (the dispatcher claims the jobs it has room for).

        In one statement each becomes running with ``attempt + 1``, the lease (owner, now +
        lease_seconds) and ``started_at``; a queued→running event is written in the same
        transaction. Jobs with ``cancel_requested`` are skipped. Never claims a job twice.
        """
        now = utcnow()
        expires = now + timedelta(seconds=lease_seconds)
        # A materialized CTE: PostgreSQL may re-run a plain ``IN (SELECT ... LIMIT n FOR UPDATE
        # SKIP LOCKED)`` subquery inside an UPDATE and so claim more than ``limit`` rows.
        only = [JOBS.c.id.in_(list(ids))] if ids is not None else []
        picked = (
            select(JOBS.c.id)
            .where(JOBS.c.status == Q.value, JOBS.c.cancel_requested == false(), *only)
            .order_by(JOBS.c.priority.desc(), JOBS.c.created_at, JOBS.c.id)
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
                f"claimed by {owner}",
                now,
                extra,
            )
        rows = sorted(rows, key=lambda r: (-r.priority, r.created_at, r.id))
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
        with write_tx(self._engine) as conn:
            rows = move(
                conn,
                R,
                new,
                [JOBS.c.id == job_id, JOBS.c.attempt == attempt],
                values,
                reason or _finish_reason(new, error),
                now,
            )
            if not rows:
                refuse(conn, job_id, attempt, new)
            return self.view(conn, job_id)

    # --- cancel, leases, scheduling --------------------------------------------------------

    def request_cancel(self, *, job_id: str, tenant: str | None = None) -> JobView:
        """Cancel a job: a queued one becomes cancelled at once (event queued → cancelled), a
        running one gets ``cancel_requested`` (idempotent). A finished one raises
        :class:`InvalidTransition`. Only conditional UPDATEs: safe against a racing claim."""
        now = utcnow()
        scope = job_scope(job_id, tenant)
        with write_tx(self._engine) as conn:
            for _ in range(5):
                done = move(
                    conn,
                    Q,
                    JobStatus.CANCELLED,
                    scope,
                    dict(cancel_requested=True, finished_at=now, pending_reason=None),
                    "cancelled before it ran",
                    now,
                )
                flagged = (
                    done
                    or conn.execute(
                        update(JOBS)
                        .where(*scope, JOBS.c.status == R.value)
                        .values(cancel_requested=True, updated_at=now)
                        .returning(JOBS.c.id)
                    ).first()
                )
                if flagged:
                    return self.view(conn, job_id)
                current = conn.execute(select(JOBS.c.status).where(*scope)).scalar()
                if current is None:
                    raise JobNotFound(job_id)
                if current in TERMINAL:
                    raise InvalidTransition(job_id, current, JobStatus.CANCELLED.value)
            raise RuntimeError(f"job {job_id} kept changing status while being cancelled")

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
        spent = JOBS.c.attempt >= JOBS.c.max_attempts
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


def _finish_reason(status: JobStatus, error: Any) -> str:
    if status is JobStatus.FAILED and error is not None:
        message = error.get("message", error) if isinstance(error, dict) else error
        return f"failed: {str(message)[:500]}"
    return {JobStatus.SUCCEEDED: "succeeded", JobStatus.CANCELLED: "cancelled on request"}.get(
        status, status.value
    )
