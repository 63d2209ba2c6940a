"""Submitting and reading jobs: idempotency, tenants, pagination, counts."""

from __future__ import annotations

from collections.abc import Callable

import pytest
from sqlalchemy import Engine, select, update

from core.spec import JobSpec
from db.errors import IdempotencyConflict, InvalidCursor, JobNotFound
from db.models import JOBS
from db.states import JobStatus
from db.store import JobStore

SpecFactory = Callable[..., JobSpec]
BulkQueue = Callable[..., list[str]]


def test_submit_queues_the_spec_with_one_event(store: JobStore, make_spec: SpecFactory) -> None:
    spec = make_spec(name="iris-mlp", priority=7, max_attempts=5)
    job = store.submit(spec=spec, tenant="acme")
    assert job.created is True
    assert (job.status, job.attempt, job.priority, job.max_attempts) == ("queued", 0, 7, 5)
    assert job.name == "iris-mlp" and job.tenant == "acme"
    stored = store.get(job_id=job.id)
    assert stored == job  # every column as returned by submit
    assert stored.spec == spec.model_dump(mode="json")
    assert JobSpec.model_validate(stored.spec).hash_fields() == spec.hash_fields()
    assert stored.created_at.tzinfo is not None and stored.lease_owner is None
    events = store.events(job_id=job.id)
    assert [(e.from_status, e.to_status, e.attempt) for e in events] == [(None, "queued", 0)]


def test_same_key_same_spec_returns_the_first_job(store: JobStore, make_spec: SpecFactory) -> None:
    first = store.submit(spec=make_spec(priority=1), tenant="t", idempotency_key="k1")
    again = store.submit(spec=make_spec(priority=1), tenant="t", idempotency_key="k1")
    assert (first.created, again.created) == (True, False)
    assert again.id == first.id
    assert store.counts_by_status(tenant="t")["queued"] == 1
    assert len(store.events(job_id=first.id)) == 1


def test_same_key_different_spec_conflicts_and_changes_nothing(
    store: JobStore, make_spec: SpecFactory
) -> None:
    first = store.submit(spec=make_spec(priority=1), tenant="t", idempotency_key="k1")
    with pytest.raises(IdempotencyConflict) as info:
        store.submit(spec=make_spec(priority=2), tenant="t", idempotency_key="k1")
    assert info.value.existing_job_id == first.id and info.value.key == "k1"
    assert store.get(job_id=first.id).priority == 1
    assert store.get(job_id=first.id).spec == first.spec
    assert sum(store.counts_by_status().values()) == 1


def test_keys_are_per_tenant(store: JobStore, make_spec: SpecFactory) -> None:
    a = store.submit(spec=make_spec(), tenant="a", idempotency_key="same")
    b = store.submit(spec=make_spec(priority=3), tenant="b", idempotency_key="same")
    assert a.id != b.id and a.created and b.created


def test_unknown_job_is_not_found(store: JobStore) -> None:
    for call in (
        lambda: store.get(job_id="nope"),
        lambda: store.events(job_id="nope"),
        lambda: store.request_cancel(job_id="nope"),
        lambda: store.heartbeat(job_id="nope", attempt=1, lease_seconds=5),
        lambda: store.finish(job_id="nope", attempt=1, status="succeeded"),
        lambda: store.fail_queued(job_id="nope", reason="x"),
        lambda: store.queue_position(job_id="nope"),
    ):
        with pytest.raises(JobNotFound):
            call()


def test_tenants_see_only_their_jobs(store: JobStore, make_spec: SpecFactory) -> None:
    mine = store.submit(spec=make_spec(), tenant="alice")
    theirs = store.submit(spec=make_spec(), tenant="bob")
    assert store.get(job_id=mine.id, tenant="alice").id == mine.id
    with pytest.raises(JobNotFound):
        store.get(job_id=theirs.id, tenant="alice")
    with pytest.raises(JobNotFound):
        store.events(job_id=theirs.id, tenant="alice")
    with pytest.raises(JobNotFound):
        store.request_cancel(job_id=theirs.id, tenant="alice")
    assert store.get(job_id=theirs.id).status == "queued"  # the refused cancel changed nothing
    page, cursor = store.list(tenant="alice")
    assert [j.id for j in page] == [mine.id] and cursor is None
    assert {j.id for j in store.list()[0]} == {mine.id, theirs.id}
    assert store.counts_by_status(tenant="bob") == {
        "queued": 1, "running": 0, "succeeded": 0, "failed": 0, "cancelled": 0, "pruned": 0
    }  # fmt: skip


def test_cursor_pages_cover_every_row_once_newest_first(
    store: JobStore, engine: Engine, make_spec: SpecFactory, bulk_queue: BulkQueue
) -> None:
    ids = bulk_queue(engine, 23, spec=make_spec())
    # five jobs share one created_at: the id breaks the tie
    with engine.begin() as conn:
        same = conn.execute(select(JOBS.c.created_at).where(JOBS.c.id == ids[10])).scalar_one()
        conn.execute(update(JOBS).where(JOBS.c.id.in_(ids[10:15])).values(created_at=same))
    seen: list[str] = []
    cursor: str | None = None
    pages = 0
    while True:
        page, cursor = store.list(limit=5, cursor=cursor)
        seen += [j.id for j in page]
        pages += 1
        if cursor is None:
            break
    assert pages == 5 and len(seen) == 23 and set(seen) == set(ids)
    full, _ = store.list(limit=100)
    assert [j.id for j in full] == seen
    keys = [(j.created_at, j.id) for j in full]
    assert keys == sorted(keys, reverse=True)


def test_list_filters_by_status_and_name(store: JobStore, make_spec: SpecFactory) -> None:
    a = store.submit(spec=make_spec(name="a"))
    b = store.submit(spec=make_spec(name="b"))
    store.request_cancel(job_id=a.id)
    assert [j.id for j in store.list(status="cancelled")[0]] == [a.id]
    assert [j.id for j in store.list(status=JobStatus.QUEUED)[0]] == [b.id]
    assert [j.id for j in store.list(name="b")[0]] == [b.id]
    with pytest.raises(InvalidCursor):
        store.list(cursor="garbage!")


def test_list_by_id_and_name_prefix_within_the_tenant(
    store: JobStore, make_spec: SpecFactory
) -> None:
    """A prefix is taken literally (``%`` and ``_`` match only themselves) and only within
    the tenant asked for."""
    mine = [store.submit(spec=make_spec(name=n), tenant="a") for n in ("run_1", "run-2", "r%x")]
    other = store.submit(spec=make_spec(name="run_9"), tenant="b")
    assert {j.id for j in store.list(tenant="a", name_prefix="run")[0]} == {mine[0].id, mine[1].id}
    assert [j.id for j in store.list(tenant="a", name_prefix="run_")[0]] == [mine[0].id]
    assert [j.id for j in store.list(tenant="a", name_prefix="r%")[0]] == [mine[2].id]
    assert store.list(tenant="a", name_prefix="%")[0] == []
    for job in mine:
        found = store.list(tenant="a", id_prefix=job.id[:8].upper())[0]
        assert [j.id for j in found] == [job.id]
    assert store.list(tenant="a", id_prefix=other.id[:8])[0] == []
    assert store.list(tenant="a", id_prefix="_")[0] == []


def test_count_queued_counts_only_queued_jobs_of_the_tenant(
    store: JobStore, make_spec: SpecFactory
) -> None:
    for _ in range(3):
        store.submit(spec=make_spec(), tenant="a")
    store.submit(spec=make_spec(), tenant="b")
    (claimed,) = store.claim(owner="w", limit=1, lease_seconds=30)
    store.finish(job_id=claimed.id, attempt=claimed.attempt, status="succeeded")
    expected_a = 3 - (claimed.tenant == "a")
    assert store.count_queued(tenant="a") == expected_a
    assert store.count_queued(tenant="b") == 1 - (claimed.tenant == "b")
    assert store.count_queued() == 3
