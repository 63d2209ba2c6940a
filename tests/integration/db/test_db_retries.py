"""A job's retries after a transient failure (``spec.retry``), on SQLite and PostgreSQL: the
running → failed → queued of one ``finish``, its events, the backoff the claim respects, the
bound, the permanent classes never retried, and a lost lease's requeue kept apart."""

from __future__ import annotations

from collections.abc import Callable
from datetime import timedelta

from sqlalchemy import Engine, update

from core.spec import JobSpec
from db.models import JOBS, utcnow
from db.states import JobStatus
from db.store import JobStore

Q, R, F = JobStatus.QUEUED, JobStatus.RUNNING, JobStatus.FAILED
AWAY = {"type": "tracking_unavailable", "message": "MLflow could not be reached: refused"}


def backoff_over(engine: Engine, job_id: str) -> None:
    """The retry's backoff has passed (its ``not_before`` moved into the past)."""
    with engine.begin() as conn:
        conn.execute(
            update(JOBS).where(JOBS.c.id == job_id).values(not_before=utcnow() - timedelta(1))
        )


def test_a_transient_failure_goes_back_to_the_queue_in_the_same_write(
    store: JobStore, engine: Engine, make_spec: Callable[..., JobSpec]
) -> None:
    retry = {"max": 2, "on": ["tracking_unavailable"], "backoff_seconds": 600}
    job = store.submit(spec=make_spec(retry=retry))
    assert store.claim(owner="w", lease_seconds=30)[0].attempt == 1
    before = utcnow()
    after = store.finish(job_id=job.id, attempt=1, status="failed", error=AWAY)
    assert after.status is Q and after.retries == 1 and after.finished_at is None
    assert after.error == AWAY  # why it is being retried, until an attempt ends otherwise
    assert after.not_before is not None
    assert before + timedelta(seconds=600) <= after.not_before <= utcnow() + timedelta(seconds=600)
    events = store.events(job_id=job.id)
    assert [(e.from_status, e.to_status, e.attempt) for e in events] == [
        (None, Q, 0), (Q, R, 1), (R, F, 1), (F, Q, 1)
    ]  # fmt: skip
    assert events[2].reason == "failed: MLflow could not be reached: refused"
    said = events[3].reason or ""
    assert said.startswith("retry 1 of 2 after tracking_unavailable (MLflow could not be")
    assert "not before" in said and after.pending_reason == said

    assert store.claim(owner="w", lease_seconds=30) == []  # its backoff holds it
    assert store.recount_queue_depth() == {}  # the queue counters followed the retry
    assert store.next_queued() == []
    backoff_over(engine, job.id)
    [again] = store.claim(owner="w", lease_seconds=30)
    assert again.attempt == 2 and store.get(job_id=job.id).not_before is None
    done = store.finish(job_id=job.id, attempt=2, status="succeeded", result={"ok": 1})
    assert done.status is JobStatus.SUCCEEDED and done.error is None and done.retries == 1


def test_retries_stop_at_their_bound(
    store: JobStore, engine: Engine, make_spec: Callable[..., JobSpec]
) -> None:
    retry = {"max": 2, "on": ["tracking_unavailable", "tracking_failed"], "backoff_seconds": 0}
    job = store.submit(spec=make_spec(retry=retry, max_attempts=1))
    for attempt in (1, 2, 3):
        [claimed] = store.claim(owner="w", lease_seconds=30)
        assert claimed.attempt == attempt
        last = store.finish(job_id=job.id, attempt=attempt, status="failed", error=AWAY)
    assert last.status is F and last.retries == 2
    assert store.claim(owner="w", lease_seconds=30) == []
    moves = [(e.from_status, e.to_status) for e in store.events(job_id=job.id)]
    assert moves.count((F, Q)) == 2 and moves[-1] == (R, F)


def test_a_permanent_or_unlisted_class_is_never_retried(
    store: JobStore, make_spec: Callable[..., JobSpec]
) -> None:
    retry = {"max": 3, "on": ["tracking_unavailable", "database_unavailable"]}
    errors = [
        {"type": "diverged", "message": "the training loss is not finite", "epoch": 2},
        {"type": "tracking_failed", "message": "not listed by this job"},
        {"type": "ValueError", "message": "anything else"},
        "a plain message",
    ]
    for error in errors:
        job = store.submit(spec=make_spec(retry=retry))
        [claimed] = store.claim(owner="w", lease_seconds=30)
        ended = store.finish(job_id=job.id, attempt=claimed.attempt, status="failed", error=error)
        assert ended.status is F and not ended.retries, error
        assert (F, Q) not in [(e.from_status, e.to_status) for e in store.events(job_id=job.id)]


def test_a_job_without_retry_fails_for_a_transient_class(
    store: JobStore, make_spec: Callable[..., JobSpec]
) -> None:
    job = store.submit(spec=make_spec())
    store.claim(owner="w", lease_seconds=30)
    assert store.finish(job_id=job.id, attempt=1, status="failed", error=AWAY).status is F


def test_a_cancel_asked_before_the_failure_stands(
    store: JobStore, make_spec: Callable[..., JobSpec]
) -> None:
    job = store.submit(spec=make_spec(retry={"max": 3, "on": ["tracking_unavailable"]}))
    store.claim(owner="w", lease_seconds=30)
    store.request_cancel(job_id=job.id)
    assert store.finish(job_id=job.id, attempt=1, status="failed", error=AWAY).status is F


def test_a_lost_lease_requeues_by_max_attempts_not_counting_retries(
    store: JobStore, engine: Engine, make_spec: Callable[..., JobSpec]
) -> None:
    """max_attempts bounds the attempts lost leases take; a retry's attempt is not one."""
    retry = {"max": 3, "on": ["tracking_unavailable"], "backoff_seconds": 0}
    job = store.submit(spec=make_spec(retry=retry, max_attempts=2))
    store.claim(owner="w", lease_seconds=30)
    store.finish(job_id=job.id, attempt=1, status="failed", error=AWAY)  # retry 1
    assert store.claim(owner="w", lease_seconds=1)[0].attempt == 2
    later = utcnow() + timedelta(seconds=60)
    assert store.requeue_expired(now=later) == [(job.id, Q)]  # the first lease lost: requeued
    [third] = store.claim(owner="w", lease_seconds=1)
    assert third.attempt == 3
    assert store.requeue_expired(now=later + timedelta(seconds=60)) == [(job.id, F)]
    lost = store.get(job_id=job.id)
    assert lost.error["type"] == "lost" and lost.retries == 1
