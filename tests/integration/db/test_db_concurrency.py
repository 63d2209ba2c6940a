"""Races on the real databases: many claiming processes, zombies, cancel against claim."""

from __future__ import annotations

import multiprocessing as mp
import threading
import time
from collections import Counter
from collections.abc import Callable
from typing import Any

import pytest
from sqlalchemy import Engine, func, select

from core.spec import JobSpec
from db.errors import StaleAttempt
from db.models import EVENTS, JOBS
from db.session import make_engine
from db.store import JobStore

SpecFactory = Callable[..., JobSpec]
BulkQueue = Callable[..., list[str]]

N_JOBS = 2000
N_PROCS = 4


def _claim_until_empty(url: str, owner: str, start: Any, out: Any) -> None:
    """Child process: wait for the start signal, claim batches until none is left."""
    engine = make_engine(url, pool_size=1)
    store = JobStore(engine)
    got: list[tuple[str, int]] = []
    try:
        store.counts_by_status()  # connect before the race starts
        start.wait()
        while claimed := store.claim(owner=owner, limit=10, lease_seconds=600):
            got += [(c.id, c.attempt) for c in claimed]
    finally:
        engine.dispose()
        out.put((owner, got))


@pytest.mark.slow
def test_four_processes_claim_every_job_exactly_once(
    migrated_url: str, engine: Engine, make_spec: SpecFactory, bulk_queue: BulkQueue
) -> None:
    ids = bulk_queue(engine, N_JOBS, spec=make_spec())
    ctx = mp.get_context("spawn")
    start, out = ctx.Event(), ctx.Queue()
    procs = [
        ctx.Process(target=_claim_until_empty, args=(migrated_url, f"w{i}", start, out))
        for i in range(N_PROCS)
    ]
    for p in procs:
        p.start()
    start.set()
    results = dict(out.get(timeout=120) for _ in procs)
    for p in procs:
        p.join(timeout=30)
        assert p.exitcode == 0
    claimed = [job for got in results.values() for job in got]
    claimed_ids = [job_id for job_id, _ in claimed]
    assert len(claimed_ids) == len(set(claimed_ids)) == N_JOBS  # no duplicates
    assert set(claimed_ids) == set(ids)  # none lost
    assert {attempt for _, attempt in claimed} == {1}
    with engine.connect() as conn:
        owners = dict(conn.execute(select(JOBS.c.id, JOBS.c.lease_owner)).all())
        per_job = Counter(
            conn.execute(select(EVENTS.c.job_id).where(EVENTS.c.to_status == "running")).scalars()
        )
    assert all(owners[job_id] == owner for owner, got in results.items() for job_id, _ in got)
    assert set(per_job.values()) == {1} and len(per_job) == N_JOBS
    store = JobStore(engine)
    assert store.counts_by_status()["running"] == N_JOBS
    assert store.counts_by_status()["queued"] == 0


@pytest.mark.chaos  # an attempt lost: its lease expires
def test_zombie_attempt_is_fenced_off(store: JobStore, make_spec: SpecFactory) -> None:
    job = store.submit(spec=make_spec())
    [zombie] = store.claim(owner="zombie", lease_seconds=0.2)
    time.sleep(0.3)  # the zombie stops heartbeating; its lease runs out
    assert store.requeue_expired() == [(job.id, "queued")]
    with pytest.raises(StaleAttempt):  # requeued, not yet claimed again
        store.heartbeat(job_id=job.id, attempt=zombie.attempt, lease_seconds=60)
    [fresh] = store.claim(owner="fresh", lease_seconds=60)
    assert (fresh.id, zombie.attempt, fresh.attempt) == (job.id, 1, 2)
    store.heartbeat(job_id=job.id, attempt=2, lease_seconds=60, progress={"epoch": 1})
    with pytest.raises(StaleAttempt) as info:
        store.heartbeat(job_id=job.id, attempt=1, lease_seconds=60, progress={"epoch": 99})
    assert (info.value.current_attempt, info.value.current_status) == (2, "running")
    with pytest.raises(StaleAttempt):
        store.finish(job_id=job.id, attempt=1, status="failed", error="zombie")
    with pytest.raises(StaleAttempt):
        store.set_run(job_id=job.id, attempt=1, checkpoint_uri="file:///zombie")
    now = store.get(job_id=job.id)
    assert (now.status, now.attempt, now.lease_owner) == ("running", 2, "fresh")
    assert now.progress == {"epoch": 1} and now.error is None and now.checkpoint_uri is None
    store.finish(job_id=job.id, attempt=2, status="succeeded")
    assert [(e.from_status, e.to_status, e.attempt) for e in store.events(job_id=job.id)] == [
        (None, "queued", 0), ("queued", "running", 1), ("running", "queued", 1),
        ("queued", "running", 2), ("running", "succeeded", 2),
    ]  # fmt: skip


def _race(*calls: Callable[[], Any]) -> list[Any]:
    """Run the calls in threads released together; return each result (or exception)."""
    barrier = threading.Barrier(len(calls))
    results: list[Any] = [None] * len(calls)

    def run(i: int) -> None:
        barrier.wait()
        try:
            results[i] = calls[i]()
        except Exception as exc:  # reported by the caller's asserts
            results[i] = exc

    threads = [threading.Thread(target=run, args=(i,)) for i in range(len(calls))]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=60)
    return results


@pytest.mark.slow
def test_cancel_racing_claim_ends_in_one_consistent_state(
    store: JobStore, make_spec: SpecFactory
) -> None:
    outcomes: Counter[str] = Counter()
    spec = make_spec()
    for round_ in range(40):
        job = store.submit(spec=spec)
        cancel_view, claimed = _race(
            lambda job=job: store.request_cancel(job_id=job.id),
            lambda round_=round_: store.claim(owner=f"w{round_}", limit=1, lease_seconds=60),
        )
        assert not isinstance(cancel_view, Exception), cancel_view
        assert not isinstance(claimed, Exception), claimed
        final = store.get(job_id=job.id)
        path = [(e.from_status, e.to_status) for e in store.events(job_id=job.id)]
        if final.status == "cancelled":
            assert claimed == [] and final.attempt == 0 and final.lease_owner is None
            assert path == [(None, "queued"), ("queued", "cancelled")]
            outcomes["cancelled"] += 1
        else:
            assert [c.id for c in claimed] == [job.id]
            assert (final.status, final.cancel_requested, final.attempt) == ("running", True, 1)
            assert path == [(None, "queued"), ("queued", "running")]
            store.finish(job_id=job.id, attempt=1, status="cancelled")
            outcomes["claimed, cancel requested"] += 1
    assert sum(outcomes.values()) == 40
    assert store.counts_by_status()["cancelled"] == 40


def test_concurrent_submits_with_one_key_make_one_job(
    store: JobStore, engine: Engine, make_spec: SpecFactory
) -> None:
    spec = make_spec(name="once")
    views = _race(*[
        lambda: store.submit(spec=spec, tenant="t", idempotency_key="same") for _ in range(6)
    ])  # fmt: skip
    assert not [v for v in views if isinstance(v, Exception)], views
    assert len({v.id for v in views}) == 1
    assert sum(v.created for v in views) == 1
    with engine.connect() as conn:
        assert conn.execute(select(func.count()).select_from(JOBS)).scalar_one() == 1
        assert conn.execute(select(func.count()).select_from(EVENTS)).scalar_one() == 1
