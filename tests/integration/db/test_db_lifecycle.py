"""A job's life through the store: claim, heartbeat, finish, cancel, leases, scheduling."""

from __future__ import annotations

from collections.abc import Callable
from datetime import timedelta

import pytest
from sqlalchemy import Engine, event

from core.spec import JobSpec
from db.errors import InvalidTransition, StaleAttempt
from db.models import utcnow
from db.states import JobStatus, StopReason
from db.store import JobStore
from db.submits import SubmitRequest
from db.views import Submitted

SpecFactory = Callable[..., JobSpec]
BulkQueue = Callable[..., list[str]]


def _path(store: JobStore, job_id: str) -> list[tuple[str | None, str, int]]:
    return [(e.from_status, e.to_status, e.attempt) for e in store.events(job_id=job_id)]


def test_claim_takes_highest_priority_then_oldest(store: JobStore, make_spec: SpecFactory) -> None:
    low = store.submit(spec=make_spec(priority=-5))
    old = store.submit(spec=make_spec(priority=3))
    new = store.submit(spec=make_spec(priority=3))
    top = store.submit(spec=make_spec(priority=9))
    first = store.claim(owner="w1", limit=2, lease_seconds=60)
    assert [c.id for c in first] == [top.id, old.id]
    assert [c.id for c in store.claim(owner="w2", limit=5, lease_seconds=60)] == [new.id, low.id]
    assert store.claim(owner="w3", limit=5, lease_seconds=60) == []
    job = store.get(job_id=top.id)
    assert (job.status, job.attempt, job.lease_owner) == ("running", 1, "w1")
    assert job.lease_expires_at is not None and job.started_at is not None
    assert job.lease_expires_at - job.started_at == timedelta(seconds=60)
    assert first[0].spec == top.spec and first[0].attempt == 1
    assert _path(store, top.id) == [(None, "queued", 0), ("queued", "running", 1)]


def test_a_claims_note_is_said_in_each_claimed_jobs_event(
    store: JobStore, make_spec: SpecFactory
) -> None:
    a, b = (store.submit(spec=make_spec()).id for _ in range(2))
    store.claim(owner="w1", ids=[a], lease_seconds=60, note="trains alone, not in a pack: x")
    store.claim(owner="w1", ids=[b], lease_seconds=60)
    assert store.events(job_id=a)[-1].reason == "claimed by w1; trains alone, not in a pack: x"
    assert store.events(job_id=b)[-1].reason == "claimed by w1"


def test_every_reader_follows_the_one_claim_order(
    store: JobStore, engine: Engine, make_spec: SpecFactory, bulk_queue: BulkQueue
) -> None:
    """next_queued, queue_position, a group's answered positions and claim agree on one
    order, and it is the documented one: priority desc, then created_at, then id. The queue
    holds every kind of tie: older jobs of one priority, a group sharing one instant across
    priorities, and later single submits that overtake it."""
    bulk_queue(engine, 3, spec=make_spec(), priority=0)
    bulk_queue(engine, 2, spec=make_spec(priority=5), priority=5)
    group = store.submit_many([SubmitRequest(make_spec(priority=p)) for p in (0, 5, 9, 5, 0, -1)])
    for answer in group:
        assert isinstance(answer, Submitted)
        assert answer.position == store.queue_position(job_id=answer.job.id)
    for p in (9, 0, 5):
        store.submit(spec=make_spec(priority=p))
    queued = store.next_queued(limit=100)
    assert len(queued) == 14
    order = [(-j.priority, j.created_at, j.id) for j in queued]
    assert order == sorted(order) and len(set(order)) == len(order)
    assert [store.queue_position(job_id=j.id) for j in queued] == list(range(len(queued)))
    claimed: list[str] = []
    for limit in (1, 4, 2, 7):
        batch = store.claim(owner="w", limit=limit, lease_seconds=60)
        assert len(batch) == limit
        claimed += [c.id for c in batch]
    assert claimed == [j.id for j in queued]


def test_heartbeat_renews_lease_stores_progress_and_reports_cancel(
    store: JobStore, make_spec: SpecFactory
) -> None:
    job = store.submit(spec=make_spec())
    [c] = store.claim(owner="w", lease_seconds=1)
    progress = {"epoch": 2, "step": 40, "metrics": {"val_loss": 0.31}}
    assert store.heartbeat(job_id=job.id, attempt=c.attempt, lease_seconds=120,
                           progress=progress, node="node-a") is False  # fmt: skip
    seen = store.get(job_id=job.id)
    assert seen.progress == progress and seen.node == "node-a"
    assert seen.lease_expires_at is not None and seen.lease_expires_at > utcnow() + timedelta(
        seconds=100
    )
    store.request_cancel(job_id=job.id)
    assert store.heartbeat(job_id=job.id, attempt=c.attempt, lease_seconds=120) is True
    assert store.get(job_id=job.id).progress == progress  # no progress given: kept


def test_heartbeat_many_renews_a_packs_leases_in_one_statement_fenced_per_member(
    store: JobStore, engine: Engine, make_spec: SpecFactory
) -> None:
    """A pack's beat: each member's own progress, each lease renewed, a stop asked of one
    member said for it alone, and a member whose attempt no longer holds its job (finished,
    or claimed again at a later attempt) left out of the answer and its row untouched."""
    jobs = [store.submit(spec=make_spec()) for _ in range(4)]
    claimed = {c.id: c for c in store.claim(owner="w", limit=4, lease_seconds=1)}
    a, b, done, other = (claimed[j.id] for j in jobs)
    store.finish(job_id=done.id, attempt=done.attempt, status="succeeded", result={})
    store.request_stop(job_id=b.id, reason=StopReason.PRUNED)
    statements: list[str] = []
    listen = lambda *args: statements.append(args[2])  # noqa: E731
    event.listen(engine, "before_cursor_execute", listen)
    try:
        answer = store.heartbeat_many(
            beats=[
                (a.id, a.attempt, {"epoch": 1, "member": "a"}),
                (b.id, b.attempt, {"epoch": 2, "member": "b"}),
                (done.id, done.attempt, {"epoch": 3}),
                (other.id, other.attempt + 1, {"epoch": 4}),  # not its attempt
            ],
            lease_seconds=120,
            node="node-p",
        )
    finally:
        event.remove(engine, "before_cursor_execute", listen)
    assert answer == {a.id: False, b.id: True}
    updates = [s for s in statements if not s.startswith("BEGIN")]  # SQLite's write lock
    assert len(updates) == 1 and updates[0].lstrip().upper().startswith("UPDATE")
    for member, tag in ((a, "a"), (b, "b")):
        seen = store.get(job_id=member.id)
        assert seen.progress == {"epoch": 1 if tag == "a" else 2, "member": tag}
        assert seen.node == "node-p" and seen.lease_expires_at is not None
        assert seen.lease_expires_at > utcnow() + timedelta(seconds=100)
    assert store.get(job_id=done.id).status == "succeeded"
    untouched = store.get(job_id=other.id)
    assert untouched.progress is None and untouched.node != "node-p"
    assert untouched.lease_expires_at is not None
    assert untouched.lease_expires_at < utcnow() + timedelta(seconds=100)


def test_finish_records_outcome_and_event(store: JobStore, make_spec: SpecFactory) -> None:
    job = store.submit(spec=make_spec())
    [c] = store.claim(owner="w", lease_seconds=60)
    store.set_run(job_id=job.id, attempt=c.attempt, mlflow_run_id="run123",
                  checkpoint_uri="runs:/run123/checkpoints/epoch-3")  # fmt: skip
    done = store.finish(job_id=job.id, attempt=c.attempt, status="succeeded",
                        result={"test_accuracy": 0.97})  # fmt: skip
    assert (done.status, done.result, done.mlflow_run_id) == ("succeeded", {"test_accuracy": 0.97},
                                                             "run123")  # fmt: skip
    assert done.checkpoint_uri == "runs:/run123/checkpoints/epoch-3"
    assert (
        done.finished_at is not None and done.lease_owner is None and done.lease_expires_at is None
    )
    events = store.events(job_id=job.id)
    assert (events[-1].from_status, events[-1].to_status, events[-1].reason) == (
        "running", "succeeded", "succeeded"
    )  # fmt: skip
    with pytest.raises(InvalidTransition) as info:  # a second finish by the same attempt
        store.finish(job_id=job.id, attempt=c.attempt, status="failed", error="late")
    assert info.value.from_status == "succeeded"
    assert store.get(job_id=job.id).status == "succeeded"


def test_the_run_and_its_experiment_are_stored_together_and_fenced(
    store: JobStore, make_spec: SpecFactory
) -> None:
    """The attempt's one write of its run stores the run's experiment id beside the run id
    (the API builds the run's link from both); later writes of a checkpoint keep them, a
    resumed attempt stores them again, and a zombie attempt cannot overwrite them."""
    job = store.submit(spec=make_spec(max_attempts=2))
    assert job.mlflow_experiment_id is None
    [first] = store.claim(owner="w", lease_seconds=5)
    store.set_run(job_id=job.id, attempt=first.attempt, mlflow_run_id="a" * 32,
                  mlflow_experiment_id="123456789012345678", checkpoint_uri="runs:/a/c")  # fmt: skip
    stored = store.get(job_id=job.id)
    assert (stored.mlflow_run_id, stored.mlflow_experiment_id) == ("a" * 32, "123456789012345678")
    store.set_run(job_id=job.id, attempt=first.attempt, checkpoint_uri="runs:/a/c2")
    assert store.get(job_id=job.id).mlflow_experiment_id == "123456789012345678"
    store.requeue_expired(now=utcnow() + timedelta(seconds=6))
    [second] = store.claim(owner="w", lease_seconds=60)
    assert second.attempt == 2
    with pytest.raises(StaleAttempt):
        store.set_run(job_id=job.id, attempt=1, mlflow_run_id="z" * 32, mlflow_experiment_id="9")
    store.set_run(job_id=job.id, attempt=2, mlflow_run_id="a" * 32, mlflow_experiment_id="1")
    done = store.finish(job_id=job.id, attempt=2, status="succeeded", result={})
    assert (done.mlflow_run_id, done.mlflow_experiment_id) == ("a" * 32, "1")
    [listed], _ = store.list(limit=1)
    assert listed.mlflow_experiment_id == "1"


def test_failed_finish_keeps_the_error(store: JobStore, make_spec: SpecFactory) -> None:
    job = store.submit(spec=make_spec())
    [c] = store.claim(owner="w", lease_seconds=60)
    error = {"type": "Diverged", "message": "loss became nan at epoch 4"}
    done = store.finish(job_id=job.id, attempt=c.attempt, status=JobStatus.FAILED, error=error)
    assert done.error == error
    assert store.events(job_id=job.id)[-1].reason == "failed: loss became nan at epoch 4"


def test_illegal_moves_are_refused(store: JobStore, make_spec: SpecFactory) -> None:
    queued = store.submit(spec=make_spec())
    with pytest.raises(InvalidTransition) as info:
        store.finish(job_id=queued.id, attempt=0, status="succeeded")
    assert (info.value.from_status, info.value.to_status) == ("queued", "succeeded")
    with pytest.raises(StaleAttempt):
        store.heartbeat(job_id=queued.id, attempt=0, lease_seconds=5)
    with pytest.raises(ValueError):
        store.finish(job_id=queued.id, attempt=0, status="queued")
    [c] = store.claim(owner="w", lease_seconds=60)
    store.finish(job_id=c.id, attempt=1, status="succeeded")
    with pytest.raises(InvalidTransition) as info:
        store.request_cancel(job_id=c.id)
    assert info.value.from_status == "succeeded" and "succeeded" in str(info.value)
    with pytest.raises(InvalidTransition):
        store.fail_queued(job_id=c.id, reason="x")
    assert _path(store, c.id) == [(None, "queued", 0), ("queued", "running", 1),
                                  ("running", "succeeded", 1)]  # fmt: skip


def test_cancel_queued_is_immediate_and_running_is_requested(
    store: JobStore, make_spec: SpecFactory
) -> None:
    queued = store.submit(spec=make_spec(priority=-1))
    running = store.submit(spec=make_spec(priority=1))
    [c] = store.claim(owner="w", lease_seconds=60)
    assert c.id == running.id
    cancelled = store.request_cancel(job_id=queued.id)
    assert cancelled.status == "cancelled" and cancelled.finished_at is not None
    assert _path(store, queued.id) == [(None, "queued", 0), ("queued", "cancelled", 0)]
    assert store.claim(owner="w", lease_seconds=60) == []  # a cancelled job is never claimed
    for _ in range(2):  # idempotent
        flagged = store.request_cancel(job_id=running.id)
        assert (flagged.status, flagged.cancel_requested) == ("running", True)
    assert _path(store, running.id) == [(None, "queued", 0), ("queued", "running", 1)]
    store.finish(job_id=running.id, attempt=1, status="cancelled")
    assert store.events(job_id=running.id)[-1].reason == "cancelled on request"


@pytest.mark.chaos  # an attempt lost: its lease expires
def test_requeue_expired_requeues_then_fails_as_lost(
    store: JobStore, make_spec: SpecFactory
) -> None:
    job = store.submit(spec=make_spec(max_attempts=2))
    keeper = store.submit(spec=make_spec(priority=-1))
    for attempt in (1, 2):
        claimed = store.claim(owner=f"w{attempt}", lease_seconds=30)
        assert [(c.id, c.attempt) for c in claimed] == [(job.id, attempt)]
        assert store.requeue_expired() == []  # the lease still holds
        later = utcnow() + timedelta(seconds=31)
        expected = JobStatus.QUEUED if attempt == 1 else JobStatus.FAILED
        assert store.requeue_expired(now=later) == [(job.id, expected)]
    lost = store.get(job_id=job.id)
    assert (lost.status, lost.attempt, lost.lease_owner) == ("failed", 2, None)
    assert lost.error["type"] == "lost" and "attempts exhausted" in lost.error["message"]
    events = store.events(job_id=job.id)
    assert [(e.from_status, e.to_status, e.attempt) for e in events] == [
        (None, "queued", 0), ("queued", "running", 1), ("running", "queued", 1),
        ("queued", "running", 2), ("running", "failed", 2),
    ]  # fmt: skip
    assert events[-1].reason == "lost"
    assert store.get(job_id=keeper.id).status == "queued"


def test_expired_lease_with_cancel_request_ends_cancelled(
    store: JobStore, make_spec: SpecFactory
) -> None:
    job = store.submit(spec=make_spec())
    store.claim(owner="w", lease_seconds=5)
    store.request_cancel(job_id=job.id)
    assert store.requeue_expired(now=utcnow() + timedelta(seconds=6)) == [
        (job.id, JobStatus.CANCELLED)
    ]
    assert store.get(job_id=job.id).status == "cancelled"
    assert _path(store, job.id)[-1] == ("running", "cancelled", 1)


def test_lost_runs_are_the_runs_of_jobs_an_expired_lease_ended(
    store: JobStore, make_spec: SpecFactory
) -> None:
    start = utcnow()
    jobs = {n: store.submit(spec=make_spec(name=n, max_attempts=1 if n != "requeued" else 2)).id
            for n in ("lost", "cancelled", "no-run", "requeued", "diverged")}  # fmt: skip
    assert len(store.claim(owner="w", limit=5, lease_seconds=5)) == 5
    for name in ("lost", "cancelled", "requeued", "diverged"):
        store.set_run(job_id=jobs[name], attempt=1, mlflow_run_id=f"run-{name}")
    store.request_cancel(job_id=jobs["cancelled"])
    store.finish(job_id=jobs["diverged"], attempt=1, status="failed",
                 error={"type": "diverged", "message": "nan"})  # fmt: skip
    later = utcnow() + timedelta(seconds=6)
    assert dict(store.requeue_expired(now=later)) == {
        jobs["lost"]: "failed", jobs["cancelled"]: "cancelled", jobs["no-run"]: "failed",
        jobs["requeued"]: "queued",
    }  # fmt: skip
    assert sorted(store.lost_runs(since=start)) == sorted([
        (jobs["lost"], "run-lost", JobStatus.FAILED),
        (jobs["cancelled"], "run-cancelled", JobStatus.CANCELLED),
    ])  # fmt: skip
    assert store.lost_runs(since=later + timedelta(seconds=1)) == []


@pytest.mark.chaos  # an attempt seen dead: settled at once, not a lease later
def test_release_settles_a_dead_attempt_at_once_naming_the_death(
    store: JobStore, make_spec: SpecFactory
) -> None:
    start = utcnow()
    job = store.submit(spec=make_spec(max_attempts=2))
    cancelled = store.submit(spec=make_spec(priority=-1))
    [first] = store.claim(owner="w1", lease_seconds=3600)
    store.set_run(job_id=job.id, attempt=1, mlflow_run_id="run-job")
    why = "WorkerCrashedError: The worker died unexpectedly"
    assert store.release(job_id=job.id, attempt=1, why=why) is JobStatus.QUEUED
    assert store.release(job_id=job.id, attempt=1, why=why) is None  # settled once
    seen = store.get(job_id=job.id)
    assert (seen.status, seen.lease_owner, seen.lease_expires_at) == ("queued", None, None)
    assert store.events(job_id=job.id)[-1].reason == f"attempt died ({why}); requeued"
    [second] = store.claim(owner="w2", lease_seconds=3600)
    assert (second.id, second.attempt) == (job.id, 2)
    assert store.release(job_id=job.id, attempt=1, why=why) is None  # stale: fenced out
    assert store.get(job_id=job.id).status == "running"
    assert store.release(job_id=job.id, attempt=2, why=why) is JobStatus.FAILED
    lost = store.get(job_id=job.id)
    assert lost.error == {"type": "lost",
                          "message": f"the last attempt died ({why}): attempts exhausted"}  # fmt: skip
    [third] = store.claim(owner="w3", lease_seconds=3600)
    store.set_run(job_id=cancelled.id, attempt=1, mlflow_run_id="run-cancelled")
    store.request_cancel(job_id=cancelled.id)
    assert store.release(job_id=cancelled.id, attempt=1, why="TaskCancelledError") is (
        JobStatus.CANCELLED
    )
    assert _path(store, cancelled.id)[-1] == ("running", "cancelled", 1)
    # nobody else closes these runs: the dispatcher hands them to its closer
    assert sorted(store.lost_runs(since=start)) == sorted([
        (job.id, "run-job", JobStatus.FAILED),
        (cancelled.id, "run-cancelled", JobStatus.CANCELLED),
    ])  # fmt: skip
    assert first.id == job.id and third.id == cancelled.id


def test_queue_position_and_pending_reason(store: JobStore, make_spec: SpecFactory) -> None:
    a = store.submit(spec=make_spec(priority=5))
    b = store.submit(spec=make_spec(priority=0))
    c = store.submit(spec=make_spec(priority=0))
    d = store.submit(spec=make_spec(priority=9))
    assert [store.queue_position(job_id=j.id) for j in (d, a, b, c)] == [0, 1, 2, 3]
    assert store.pending_reason(job_id=c.id) == "3 jobs ahead in the queue"
    assert store.pending_reason(job_id=a.id) == "1 job ahead in the queue"
    assert store.pending_reason(job_id=d.id) == "waiting for a free worker"
    assert store.set_pending_reason(job_id=d.id, reason="needs 1 GPU; no node has one free")
    assert store.pending_reason(job_id=d.id) == "needs 1 GPU; no node has one free"
    [claimed] = store.claim(owner="w", lease_seconds=60)
    assert claimed.id == d.id
    assert store.get(job_id=d.id).pending_reason is None  # cleared by the claim
    assert store.queue_position(job_id=d.id) is None and store.pending_reason(job_id=d.id) is None
    assert not store.set_pending_reason(job_id=d.id, reason="x")  # not queued any more
    assert store.queue_position(job_id=c.id) == 2


def test_fail_queued_for_unschedulable_jobs(store: JobStore, make_spec: SpecFactory) -> None:
    job = store.submit(spec=make_spec())
    failed = store.fail_queued(job_id=job.id, reason="needs 4 GPUs; the largest node has 1")
    assert failed.status == "failed" and failed.error["type"] == "unschedulable"
    assert store.events(job_id=job.id)[-1].reason == "needs 4 GPUs; the largest node has 1"
    assert store.claim(owner="w", lease_seconds=5) == []
    counts = store.counts_by_status()
    assert counts["failed"] == 1 and counts["queued"] == 0
