"""``queue_depth`` (migration 0003, kept by triggers) always equals the count of claimable jobs
per tenant and priority, whatever writes the jobs; the submit's positions and quota read it.
Random sequences of every operation on the queue, on SQLite and on PostgreSQL."""

from __future__ import annotations

import contextlib
import random
import threading
import time
import uuid
from collections.abc import Callable
from datetime import timedelta
from pathlib import Path

from sqlalchemy import Engine, delete, func, insert, select, update

from core.spec import JobSpec
from db.errors import QueueFull, StoreError
from db.migrate import upgrade
from db.models import JOBS, QUEUE_DEPTH, utcnow
from db.session import make_engine, write_tx
from db.states import JobStatus
from db.store import JobStore
from db.submits import SubmitRequest
from db.views import Submitted
from tests.integration.db.conftest import insert_queued

SpecFactory = Callable[..., JobSpec]
Counts = dict[tuple[str, int], int]


def depth(engine: Engine) -> Counts:
    with engine.connect() as conn:
        rows = conn.execute(
            select(QUEUE_DEPTH.c.tenant, QUEUE_DEPTH.c.priority, QUEUE_DEPTH.c.queued)
        )
        return {(t, p): int(q) for t, p, q in rows if q}


def truth(engine: Engine) -> Counts:
    c = JOBS.c
    with engine.connect() as conn:
        rows = conn.execute(
            select(c.tenant, c.priority, func.count())
            .where(c.status == "queued", c.cancel_requested.is_(False))
            .group_by(c.tenant, c.priority)
        )
        return {(t, p): int(n) for t, p, n in rows}


def test_the_counters_follow_every_write(
    store: JobStore, engine: Engine, make_spec: SpecFactory
) -> None:
    rng = random.Random(2026)
    ops: dict[str, int] = {}
    widest = 0  # the most (tenant, priority) keys queued at once
    for step in range(240):
        op = rng.choice(
            ["submit", "group", "group", "claim", "cancel", "finish", "expire", "release",
             "fail_queued", "delete", "reprioritise"]
        )  # fmt: skip
        ids = [j.id for j in store.list(limit=500)[0]]
        queued_ids = [j.id for j in store.list(limit=500)[0] if j.status.value == "queued"]
        running = [j for j in store.list(limit=500)[0] if j.status.value == "running"]
        if op == "submit":
            key = rng.choice([None, "k1", "k2"])
            spec = make_spec(priority=rng.choice([0, 1, 5]))
            with contextlib.suppress(StoreError):  # the same key with another spec
                store.submit(spec=spec, tenant=rng.choice("ab"), idempotency_key=key)
        elif op == "group":
            group = [
                SubmitRequest(
                    make_spec(priority=rng.choice([0, 1, 5])),
                    rng.choice("ab"),
                    rng.choice([None, None, "g1", "g2"]),
                )
                for _ in range(rng.randint(1, 6))
            ]
            answers = store.submit_many(group, max_queued=rng.choice([None, 3, 30]))
            for a in answers:
                if isinstance(a, Submitted) and a.job.created:
                    assert a.position == store.queue_position(job_id=a.job.id), step
                else:
                    assert isinstance(a, Submitted | QueueFull | StoreError)
        elif op == "claim":
            store.claim(owner="w", limit=rng.randint(1, 3), lease_seconds=60)
        elif op == "cancel" and ids:
            with contextlib.suppress(StoreError):  # already finished
                store.request_cancel(job_id=rng.choice(ids))
        elif op == "finish" and running:
            job = rng.choice(running)
            status = rng.choice([JobStatus.SUCCEEDED, JobStatus.FAILED, JobStatus.CANCELLED])
            store.finish(job_id=job.id, attempt=job.attempt, status=status)
        elif op == "expire":  # every running lease lapses: requeued, cancelled or failed
            store.requeue_expired(now=utcnow() + timedelta(hours=1))
        elif op == "release" and running:  # an attempt seen dead: settled at once
            job = rng.choice(running)
            store.release(job_id=job.id, attempt=job.attempt, why="WorkerCrashedError")
        elif op == "fail_queued" and queued_ids:
            store.fail_queued(job_id=rng.choice(queued_ids), reason="no node fits")
        elif op == "delete" and ids:  # an operator's clean-up of old rows
            with engine.begin() as conn:
                conn.execute(delete(JOBS).where(JOBS.c.id.in_(rng.sample(ids, min(3, len(ids))))))
        elif op == "reprioritise" and queued_ids:
            with engine.begin() as conn:
                conn.execute(
                    update(JOBS)
                    .where(JOBS.c.id.in_(rng.sample(queued_ids, min(4, len(queued_ids)))))
                    .values(priority=rng.choice([0, 2, 5]))
                )
        ops[op] = ops.get(op, 0) + 1
        now = truth(engine)
        assert depth(engine) == now, (step, op)
        widest = max(widest, len(now))
    # the counters were checked against a real queue: several (tenant, priority) keys at once
    # (how it ends depends on the random job ids: expiries and deletes may drain it)
    assert widest >= 4, widest
    assert min(ops.values()) >= 10, ops  # every operation ran


def test_the_upgrade_counts_the_queue_it_finds(db_url: str, make_spec: SpecFactory) -> None:
    upgrade(db_url, "0002")
    engine = make_engine(db_url)
    try:
        insert_queued(engine, 7, spec=make_spec(), tenant="a", priority=2)
        insert_queued(engine, 3, spec=make_spec(), tenant="b", priority=0)
        upgrade(db_url)
        assert depth(engine) == truth(engine) == {("a", 2): 7, ("b", 0): 3}
        store = JobStore(engine)
        (answer,) = store.submit_many([SubmitRequest(make_spec(priority=1), "b")], max_queued=4)
        assert isinstance(answer, Submitted) and answer.position == 7
        (full,) = store.submit_many([SubmitRequest(make_spec(), "b")], max_queued=4)
        assert isinstance(full, QueueFull)
    finally:
        engine.dispose()


def test_concurrent_writers_keep_it_exact(migrated_url: str, make_spec: SpecFactory) -> None:
    """Several processes' worth of engines submitting groups of mixed priorities while
    another claims and cancels: no deadlock, no lost update (PostgreSQL takes the counter
    rows' locks in one order)."""
    engines = [make_engine(migrated_url) for _ in range(5)]  # a claimer and 4 submitters
    errors: list[BaseException] = []

    def submitter(engine: Engine, seed: int) -> None:
        rng = random.Random(seed)
        store = JobStore(engine)
        try:
            for _ in range(25):
                group = [
                    SubmitRequest(make_spec(priority=rng.choice([0, 3, 7])), rng.choice("ab"))
                    for _ in range(rng.randint(1, 8))
                ]
                store.submit_many(group)
        except BaseException as exc:  # reported below
            errors.append(exc)

    def claimer(engine: Engine) -> None:
        store = JobStore(engine)
        try:
            for _ in range(40):
                for job in store.claim(owner="w", limit=4, lease_seconds=60):
                    store.finish(job_id=job.id, attempt=job.attempt, status=JobStatus.SUCCEEDED)
        except BaseException as exc:  # reported below
            errors.append(exc)

    threads = [threading.Thread(target=submitter, args=(e, n)) for n, e in enumerate(engines[1:])]
    threads.append(threading.Thread(target=claimer, args=(engines[0],)))
    try:
        for t in threads:
            t.start()
        for t in threads:
            t.join(timeout=120)
        assert not errors, errors[0]
        assert not any(t.is_alive() for t in threads)
        assert depth(engines[0]) == truth(engines[0])
        assert sum(truth(engines[0]).values()) > 0
    finally:
        for e in engines:
            e.dispose()


def test_the_downgrade_takes_the_triggers_with_the_table(
    db_url: str, make_spec: SpecFactory
) -> None:
    """After ``downgrade 0002`` jobs can still be written (no trigger left pointing at the
    dropped table), and upgrading again counts what was written meanwhile."""
    from alembic import command
    from sqlalchemy import inspect

    from db.migrate import alembic_config

    upgrade(db_url)
    engine = make_engine(db_url)
    try:
        insert_queued(engine, 2, spec=make_spec(), tenant="a", priority=1)
        command.downgrade(alembic_config(db_url), "0002")
        assert "queue_depth" not in inspect(engine).get_table_names()
        insert_queued(engine, 3, spec=make_spec(), tenant="a", priority=1)
        upgrade(db_url)
        assert depth(engine) == truth(engine) == {("a", 1): 5}
    finally:
        engine.dispose()


def test_a_group_that_waited_for_the_write_lock_is_stamped_after_what_it_counted(
    tmp_path: Path, make_spec: SpecFactory
) -> None:
    """SQLite, another writer holding the lock: it commits a job while the group waits. The
    group is stamped once it holds the lock, so that job is older, counted and claimed
    first: the answered position is the one a claim sees. (Stamped before waiting, the group
    was older than the job it counted: position 1, a claim's 0.)"""
    url = f"sqlite:///{tmp_path / 'lock.db'}"
    upgrade(url)
    engine = make_engine(url)
    store = JobStore(engine)
    locked, go = threading.Event(), threading.Event()

    def holder() -> None:
        with write_tx(engine) as conn:
            conn.execute(select(func.count()).select_from(JOBS))  # BEGIN IMMEDIATE: the lock
            locked.set()
            go.wait(10)
            now = utcnow()
            conn.execute(
                insert(JOBS),
                dict(id=str(uuid.uuid4()), tenant="a", name="other", spec={}, status="queued",
                     priority=0, attempt=0, max_attempts=3, cancel_requested=False,
                     created_at=now, updated_at=now),
            )  # fmt: skip

    answers: list[object] = []
    try:
        first = threading.Thread(target=holder)
        first.start()
        assert locked.wait(10)
        second = threading.Thread(
            target=lambda: answers.extend(store.submit_many([SubmitRequest(make_spec(), "a")]))
        )
        second.start()
        time.sleep(0.3)  # the group is waiting for the lock
        go.set()
        first.join(10)
        second.join(10)
        (answer,) = answers
        assert isinstance(answer, Submitted)
        assert answer.position == store.queue_position(job_id=answer.job.id) == 1
    finally:
        go.set()
        engine.dispose()


def test_the_head_schema_has_the_three_triggers(migrated_url: str) -> None:
    """A later migration that rebuilds ``jobs`` (SQLite's batch mode copies the table) drops
    its triggers without a word, and the model comparison cannot see triggers: this can."""
    engine = make_engine(migrated_url)
    try:
        with engine.connect() as conn:
            if engine.dialect.name == "sqlite":
                rows = conn.exec_driver_sql(
                    "SELECT name FROM sqlite_master WHERE type = 'trigger' AND tbl_name = 'jobs'"
                )
            else:
                rows = conn.exec_driver_sql(
                    "SELECT tgname FROM pg_trigger WHERE tgrelid = 'jobs'::regclass"
                    " AND NOT tgisinternal"
                )
            names = {name for (name,) in rows}
    finally:
        engine.dispose()
    assert names == {
        "jobs_queue_depth_insert",
        "jobs_queue_depth_update",
        "jobs_queue_depth_delete",
    }


def test_recount_corrects_counts_the_triggers_could_not_keep(
    store: JobStore, engine: Engine, make_spec: SpecFactory, migrated_url: str
) -> None:
    """Counters corrupted behind the triggers' back (one too high, one missing) are found and
    corrected, by the function and by `gradq db recount-queue`; a second run finds nothing."""
    from typer.testing import CliRunner

    from db.cli import db_app

    for tenant, priority in [("a", 0), ("a", 0), ("a", 3), ("b", 0)]:
        store.submit(spec=make_spec(priority=priority), tenant=tenant)
    with engine.begin() as conn:
        conn.execute(update(QUEUE_DEPTH).where(QUEUE_DEPTH.c.tenant == "a").values(queued=99))
        conn.execute(delete(QUEUE_DEPTH).where(QUEUE_DEPTH.c.tenant == "b"))
    assert JobStore(engine).recount_queue_depth() == {
        ("a", 0): (99, 2),
        ("a", 3): (99, 1),
        ("b", 0): (0, 1),
    }
    assert depth(engine) == truth(engine)
    with engine.begin() as conn:
        conn.execute(update(QUEUE_DEPTH).values(queued=QUEUE_DEPTH.c.queued + 5))
    result = CliRunner().invoke(db_app, ["recount-queue", "--url", migrated_url])
    assert result.exit_code == 0, result.output
    assert "tenant 'b' priority 0: 6 → 1" in result.output and "corrected 3" in result.output
    assert JobStore(engine).recount_queue_depth() == {}
    assert depth(engine) == truth(engine)
