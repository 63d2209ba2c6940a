"""Stop requests (a cancel, a sweep's prune) on the queue: asked with a reason, read back by a
dispatcher in one query that an index answers, the first one of a running job standing."""

from __future__ import annotations

from collections.abc import Callable
from datetime import timedelta

import pytest
from sqlalchemy import Engine, text

from core.spec import JobSpec
from db.errors import InvalidTransition
from db.models import utcnow
from db.queries import stop_requests_query
from db.states import JobStatus, StopReason
from db.store import LOST_CANCELLED, JobStore
from db.views import StopRequest

SpecFactory = Callable[..., JobSpec]
BulkQueue = Callable[..., list[str]]


def running(store: JobStore, spec: JobSpec, owner: str) -> str:
    job_id = store.submit(spec=spec).id
    [claimed] = store.claim(owner=owner, ids=[job_id], lease_seconds=60)
    return claimed.id


def test_a_stop_is_asked_with_its_reason_and_read_back_in_one_query(
    store: JobStore, make_spec: SpecFactory
) -> None:
    pruned, left, cancelled = (running(store, make_spec(), "d1") for _ in range(3))
    theirs = running(store, make_spec(), "d2")
    assert store.stop_requests() == []
    view = store.request_stop(job_id=pruned, reason="pruned")
    assert (view.status, view.cancel_requested) == (JobStatus.RUNNING, True)
    store.request_cancel(job_id=cancelled)
    store.request_stop(job_id=theirs, reason=StopReason.PRUNED)
    assert store.stop_requests(owner="d1") == sorted(
        [StopRequest(pruned, 1, StopReason.PRUNED), StopRequest(cancelled, 1, StopReason.CANCEL)],
        key=lambda r: r.job_id,
    )
    assert {r.job_id for r in store.stop_requests()} == {pruned, cancelled, theirs}
    assert [store.stop_reason(job_id=j) for j in (pruned, left, cancelled)] == [
        StopReason.PRUNED, None, StopReason.CANCEL,
    ]  # fmt: skip
    # a stop request is no change of status: no event
    assert [(e.from_status, e.to_status) for e in store.events(job_id=pruned)] == [
        (None, JobStatus.QUEUED), (JobStatus.QUEUED, JobStatus.RUNNING),
    ]  # fmt: skip


def test_the_first_stop_of_a_running_job_stands(store: JobStore, make_spec: SpecFactory) -> None:
    pruned, cancelled = (running(store, make_spec(), "d") for _ in range(2))
    store.request_stop(job_id=pruned, reason="pruned")
    store.request_cancel(job_id=pruned)  # a cancel after the prune: the prune stands
    store.request_cancel(job_id=cancelled)
    store.request_stop(job_id=cancelled, reason="pruned")  # and the other way round
    assert store.stop_reason(job_id=pruned) is StopReason.PRUNED
    assert store.stop_reason(job_id=cancelled) is StopReason.CANCEL


def test_a_prune_takes_only_a_running_job(store: JobStore, make_spec: SpecFactory) -> None:
    queued = store.submit(spec=make_spec()).id
    with pytest.raises(InvalidTransition) as refused:
        store.request_stop(job_id=queued, reason="pruned")
    assert (refused.value.from_status, refused.value.to_status) == ("queued", "pruned")
    job = store.get(job_id=queued)
    assert (job.status, job.cancel_requested) == (JobStatus.QUEUED, False)
    done = running(store, make_spec(), "d")
    store.finish(job_id=done, attempt=1, status="succeeded")
    with pytest.raises(InvalidTransition):
        store.request_stop(job_id=done, reason="pruned")
    with pytest.raises(ValueError):
        store.request_stop(job_id=queued, reason="tired")


def test_a_pruned_job_whose_lease_runs_out_is_not_queued_again(
    store: JobStore, make_spec: SpecFactory
) -> None:
    job_id = running(store, make_spec(), "d")
    store.request_stop(job_id=job_id, reason="pruned")
    # until the status `pruned` exists the job ends cancelled, like a cancelled one
    later = utcnow() + timedelta(seconds=61)
    assert store.requeue_expired(now=later) == [(job_id, JobStatus.CANCELLED)]
    assert store.events(job_id=job_id)[-1].reason == LOST_CANCELLED


def test_the_stop_requests_are_read_through_the_queue_index(
    engine: Engine, store: JobStore, make_spec: SpecFactory, bulk_queue: BulkQueue
) -> None:
    """Among 2,000 running jobs, the 3 asked to stop are one range of ``ix_jobs_queue`` (its
    first two columns): the query's cost follows the stopping jobs, not the running ones."""
    bulk_queue(engine, 2000, spec=make_spec())
    ids = [c.id for c in store.claim(owner="d", limit=2000, lease_seconds=60)]
    for job_id in ids[:3]:
        store.request_cancel(job_id=job_id)
    compiled = stop_requests_query("d").compile(engine, compile_kwargs={"literal_binds": True})
    with engine.begin() as conn:
        conn.execute(text("ANALYZE"))
        if engine.dialect.name == "sqlite":
            rows = conn.execute(text(f"EXPLAIN QUERY PLAN {compiled}"))
            plan = " ".join(str(r[-1]) for r in rows)
            assert "USING INDEX ix_jobs_queue (status=? AND cancel_requested=?)" in plan, plan
        else:
            plan = " ".join(r[0] for r in conn.execute(text(f"EXPLAIN {compiled}")))
            assert "Index Scan using ix_jobs_queue" in plan, plan
            condition = plan.split("Index Cond:", 1)[1].split("Filter", 1)[0]
            assert "status" in condition and "cancel_requested" in condition, plan
    assert len(store.stop_requests(owner="d")) == 3
