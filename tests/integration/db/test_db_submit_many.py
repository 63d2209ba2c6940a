"""A group of submits in one transaction (the API's group commit): the same guarantees as
one submit at a time: one event per new job, idempotency keys, the quota, positions."""

from __future__ import annotations

import threading
import uuid
from collections.abc import Callable

import pytest
from sqlalchemy import Engine, insert, select, text

from core.spec import JobSpec
from db.errors import IdempotencyConflict, QueueFull
from db.models import EVENTS, JOBS
from db.store import INSERTED_COLUMNS, JobStore
from db.submits import SubmitRequest
from db.views import Submitted

SpecFactory = Callable[..., JobSpec]


def submitted(answer: object) -> Submitted:
    assert isinstance(answer, Submitted), answer
    return answer


def test_a_group_queues_each_job_with_one_event_and_its_position(
    store: JobStore, engine: Engine, make_spec: SpecFactory
) -> None:
    older = store.submit(spec=make_spec(priority=0))
    top = store.submit(spec=make_spec(priority=9))
    group = [SubmitRequest(make_spec(priority=p), tenant="t") for p in (0, 5, 0, 9)]
    answers = [submitted(a) for a in store.submit_many(group)]
    assert all(a.job.created and a.job.status == "queued" for a in answers)
    for a in [*answers, submitted(store.submit_many([SubmitRequest(make_spec())])[0])]:
        assert a.position == store.queue_position(job_id=a.job.id)  # as a claim would see it
        assert store.get(job_id=a.job.id) == a.job
    # the claim order: 9 (older first), 5, then 0 (older first; same instant: by id)
    assert store.queue_position(job_id=top.id) == 0 and answers[3].position == 1
    assert answers[1].position == 2 and store.queue_position(job_id=older.id) == 3
    assert sorted([answers[0].position, answers[2].position]) == [4, 5]
    with engine.connect() as conn:
        events = conn.execute(select(EVENTS.c.job_id, EVENTS.c.to_status)).all()
    jobs, _ = store.list(limit=200)
    assert len(jobs) == 7  # exactly one "queued" event per job
    assert sorted(events) == sorted((j.id, "queued") for j in jobs)


def test_keys_in_the_database_and_in_the_group(store: JobStore, make_spec: SpecFactory) -> None:
    first = store.submit(spec=make_spec(priority=1), tenant="t", idempotency_key="old")
    answers = store.submit_many(
        [
            SubmitRequest(make_spec(priority=1), "t", "old"),  # a replay
            SubmitRequest(make_spec(priority=2), "t", "old"),  # another spec: conflict
            SubmitRequest(make_spec(priority=3), "t", "new"),
            SubmitRequest(make_spec(priority=3), "t", "new"),  # the same key twice in a group
            SubmitRequest(make_spec(priority=4), "t", "new"),
            SubmitRequest(make_spec(priority=3), "u", "new"),  # another tenant's key
        ]
    )
    replay, new, again, other = (submitted(answers[i]) for i in (0, 2, 3, 5))
    # two new jobs of priority 3 (t and u) are ahead of it once the group commits
    assert (replay.job.id, replay.job.created, replay.position) == (first.id, False, 2)
    assert isinstance(answers[1], IdempotencyConflict) and answers[1].existing_job_id == first.id
    assert new.job.created and (again.job.id, again.job.created) == (new.job.id, False)
    assert again.position == new.position
    assert isinstance(answers[4], IdempotencyConflict)
    assert other.job.created and other.job.id != new.job.id
    assert store.counts_by_status(tenant="t")["queued"] == 2
    assert len(store.events(job_id=new.job.id)) == 1


def test_the_quota_counts_the_group(store: JobStore, make_spec: SpecFactory) -> None:
    store.submit(spec=make_spec(), tenant="t", idempotency_key="k")
    answers = store.submit_many(
        [
            SubmitRequest(make_spec(), "t"),
            SubmitRequest(make_spec(), "t"),  # the third queued job of t: over a limit of 2
            SubmitRequest(make_spec(), "t", "k"),  # a replay is not a new job: answered
            SubmitRequest(make_spec(), "u"),
        ],
        max_queued=2,
    )
    assert submitted(answers[0]).job.created
    refused = answers[1]
    assert isinstance(refused, QueueFull) and (refused.tenant, refused.queued) == ("t", 2)
    assert not submitted(answers[2]).job.created
    assert submitted(answers[3]).job.tenant == "u"
    assert store.counts_by_status(tenant="t")["queued"] == 2


def test_concurrent_groups_with_one_key_make_one_job(
    migrated_url: str, make_spec: SpecFactory
) -> None:
    """Two stores (two API processes' writers) submit groups holding the same keys at once."""
    from db.session import make_engine

    engines = [make_engine(migrated_url) for _ in range(2)]
    stores = [JobStore(e) for e in engines]
    barrier = threading.Barrier(2)
    results: list[list[object]] = [[], []]

    def run(n: int) -> None:
        barrier.wait()
        for k in range(10):
            group = [SubmitRequest(make_spec(), "t", f"key-{k}"), SubmitRequest(make_spec(), "t")]
            results[n].extend(stores[n].submit_many(group))

    threads = [threading.Thread(target=run, args=(n,)) for n in range(2)]
    try:
        for t in threads:
            t.start()
        for t in threads:
            t.join(60)
        keyed = [submitted(results[n][i]) for n in range(2) for i in range(0, 20, 2)]
        by_key: dict[str, set[str]] = {}
        for s in keyed:
            by_key.setdefault(str(s.job.idempotency_key), set()).add(s.job.id)
        assert all(len(ids) == 1 for ids in by_key.values()) and len(by_key) == 10
        assert sum(s.job.created for s in keyed) == 10  # each key made exactly one job
        assert stores[0].counts_by_status(tenant="t")["queued"] == 10 + 20
    finally:
        for e in engines:
            e.dispose()


def test_a_group_stores_what_sqlalchemys_insert_stores(
    engine: Engine, store: JobStore, make_spec: SpecFactory
) -> None:
    """A group's insert (``_insert_jobs``: on PostgreSQL a statement of its own, unnesting
    arrays) stores every value, read raw (as text, and on SQLite with its storage class), as
    SQLAlchemy's own insert of the same row stores it: the readers (claim order, queue
    positions, time filters) compare them raw."""
    specs = [make_spec(name="a", priority=2), make_spec(name="b", seed=3, max_attempts=5)]
    done = store.submit_many(
        [SubmitRequest(specs[0], "t", "key-a"), SubmitRequest(specs[1], "u")], max_queued=None
    )
    ours = {submitted(d).job.name: submitted(d).job.id for d in done}
    twins: dict[str, str] = {}
    with engine.begin() as conn:  # the same rows (new ids and keys) through SQLAlchemy
        for name, job_id in ours.items():
            row = dict(conn.execute(select(JOBS).where(JOBS.c.id == job_id)).mappings().one())
            event = conn.execute(select(EVENTS).where(EVENTS.c.job_id == job_id)).mappings().one()
            twins[name] = row["id"] = str(uuid.uuid4())
            row["idempotency_key"] = row["idempotency_key"] and row["idempotency_key"] + "-twin"
            conn.execute(insert(JOBS), {c: row[c] for c in INSERTED_COLUMNS})
            values = {k: v for k, v in event.items() if k != "id"}
            conn.execute(insert(EVENTS), {**values, "job_id": row["id"]})

    def raw(table: str, key: str, columns: list[str], value: str) -> tuple[object, ...]:
        pg = engine.dialect.name == "postgresql"
        shown = [f"CAST({c} AS TEXT)" if pg else c for c in columns]
        shown += [] if pg else [f"typeof({c})" for c in columns]
        query = f"SELECT {', '.join(shown)} FROM {table} WHERE {key} = :v"
        with engine.connect() as conn:
            return tuple(conn.execute(text(query), {"v": value}).one())

    job_columns = [c.name for c in JOBS.c if c.name not in ("id", "idempotency_key")]
    event_columns = [c.name for c in EVENTS.c if c.name not in ("id", "job_id")]
    for name in ours:
        assert raw("jobs", "id", job_columns, ours[name]) == raw(
            "jobs", "id", job_columns, twins[name]
        ), name
        assert raw("job_events", "job_id", event_columns, ours[name]) == raw(
            "job_events", "job_id", event_columns, twins[name]
        ), name
    assert store.get(job_id=ours["a"]).idempotency_key == "key-a"


def test_psycopg_binds_a_groups_arrays_in_binary(engine: Engine) -> None:
    """psycopg's default for a list is array text, each element quoted in Python; the
    engine's connections bind lists in binary instead (a group binds a column as one list)."""
    if engine.dialect.driver != "psycopg":
        pytest.skip("psycopg's adapters only")
    from psycopg import pq
    from psycopg.adapt import PyFormat

    with engine.connect() as conn:
        adapters = conn.connection.dbapi_connection.adapters
        assert adapters.get_dumper(list, PyFormat.AUTO).format == pq.Format.BINARY


def test_a_retried_submit_finds_the_job_a_lost_commit_stored(
    store: JobStore, engine: Engine, make_spec: SpecFactory
) -> None:
    """A request retried with ``may_exist`` (its group's commit went through unseen) gets the
    job stored under its id, as created, and its place; nothing is inserted again. One not
    stored is inserted under the id it carries."""
    ids = [str(uuid.uuid4()) for _ in range(3)]
    first = [SubmitRequest(make_spec(), job_id=ids[0]),
             SubmitRequest(make_spec(), tenant="t", idempotency_key="k", job_id=ids[1])]  # fmt: skip
    store.submit_many(first)  # committed; its answers lost
    again = [SubmitRequest(r.spec, r.tenant, r.idempotency_key, r.job_id, may_exist=True)
             for r in first] + [SubmitRequest(make_spec(), job_id=ids[2], may_exist=True)]  # fmt: skip
    answers = [submitted(a) for a in store.submit_many(again)]
    assert [a.job.id for a in answers] == ids
    assert all(a.job.created for a in answers)  # each request made its job: 201, not a replay
    for a in answers:
        assert a.position == store.queue_position(job_id=a.job.id)
    with engine.connect() as conn:
        events = conn.execute(select(EVENTS.c.job_id)).scalars().all()
    jobs, _ = store.list(limit=200)
    assert sorted(j.id for j in jobs) == sorted(ids) == sorted(events)
