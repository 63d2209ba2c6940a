"""A database that cannot be reached, or a connection that drops, is ``StoreUnavailable``
from every public call of the stores, chained from the driver's error, never the driver's
error itself: a SQLite file that cannot be opened, a PostgreSQL port where nothing listens,
a PostgreSQL backend terminated under a call (after which the next call reconnects)."""

from __future__ import annotations

import socket
from collections.abc import Callable, Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import psycopg
import pytest
from sqlalchemy import event
from sqlalchemy.exc import DBAPIError

from core.spec import JobSpec, parse_spec
from db import migrate
from db.datasets import DatasetStore
from db.errors import StoreUnavailable
from db.keys import KeyStore
from db.migrate import upgrade
from db.session import make_engine
from db.states import JobStatus
from db.store import JobStore
from db.submits import SubmitRequest
from db.views import TenantCaps
from db.webhooks import WebhookStore
from tests.integration.conftest import libpq_url

SPEC = parse_spec({"dataset": "iris"})
Stores = tuple[JobStore, KeyStore, DatasetStore]

# Every public call of the three stores, with arguments (the job need not exist: the
# database is never reached).
JOB_CALLS: dict[str, Callable[[JobStore], object]] = {
    "ping": lambda s: s.ping(),
    "submit": lambda s: s.submit(spec=SPEC),
    "submit_many": lambda s: s.submit_many([SubmitRequest(SPEC)], max_queued=5),
    "claim": lambda s: s.claim(owner="w", lease_seconds=60),
    "heartbeat": lambda s: s.heartbeat(job_id="j", attempt=1, lease_seconds=60),
    "heartbeat_many": lambda s: s.heartbeat_many(beats=[("j", 1, {})], lease_seconds=60),
    "set_run": lambda s: s.set_run(job_id="j", attempt=1, mlflow_run_id="r"),
    "release": lambda s: s.release(job_id="j", attempt=1, why="gone"),
    "finish": lambda s: s.finish(job_id="j", attempt=1, status="succeeded"),
    "request_cancel": lambda s: s.request_cancel(job_id="j"),
    "request_stop": lambda s: s.request_stop(job_id="j", reason="pruned"),
    "requeue_expired": lambda s: s.requeue_expired(),
    "lost_runs": lambda s: s.lost_runs(since=datetime.now(UTC)),
    "fail_queued": lambda s: s.fail_queued(job_id="j", reason="x"),
    "set_pending_reason": lambda s: s.set_pending_reason(job_id="j", reason="x"),
    "recount_queue_depth": lambda s: s.recount_queue_depth(),
    "delete": lambda s: s.delete(job_id="j", tenant="t"),
    "finished_runs": lambda s: s.finished_runs(before=datetime.now(UTC)),
    "get": lambda s: s.get(job_id="j"),
    "list": lambda s: s.list(),
    "events": lambda s: s.events(job_id="j"),
    "counts_by_status": lambda s: s.counts_by_status(),
    "count_queued": lambda s: s.count_queued(),
    "running_counts": lambda s: s.running_counts(tenants=["t"]),
    "next_queued": lambda s: s.next_queued(),
    "queue_position": lambda s: s.queue_position(job_id="j"),
    "pending_reason": lambda s: s.pending_reason(job_id="j"),
    "stop_requests": lambda s: s.stop_requests(owner="w"),
    "stop_reason": lambda s: s.stop_reason(job_id="j"),
}
KEY_CALLS: dict[str, Callable[[KeyStore], object]] = {
    "create": lambda k: k.create(tenant="t"),
    "ensure": lambda k: k.ensure(tenant="t", key="gq_x"),
    "authenticate": lambda k: k.authenticate(key="gq_x"),
    "lookup": lambda k: k.lookup(key="gq_x"),
    "tenant_caps": lambda k: k.tenant_caps(tenants=["t"], default=TenantCaps()),
    "revoke": lambda k: k.revoke(key_id="k"),
    "list": lambda k: k.list(),
}
UPLOAD: dict[str, Any] = dict(
    tenant="t", name="n", sha256="0" * 64, size=1, rows=1, columns=["y"], target="y", uri="x"
)
DATASET_CALLS: dict[str, Callable[[DatasetStore], object]] = {
    "add": lambda d: d.add(**UPLOAD),
    "get": lambda d: d.get(dataset_id="d"),
    "list": lambda d: d.list(),
}
WEBHOOK_CALLS: dict[str, Callable[[WebhookStore], object]] = {
    "create": lambda w: w.create(tenant="t", url="https://x.example/", events=["job.failed"]),
    "get": lambda w: w.get(webhook_id="w", tenant="t"),
    "list": lambda w: w.list(tenant="t"),
    "delete": lambda w: w.delete(webhook_id="w", tenant="t"),
    "rotate": lambda w: w.rotate(webhook_id="w", tenant="t"),
    "deliveries": lambda w: w.deliveries(webhook_id="w", tenant="t"),
    "claim": lambda w: w.claim(owner="d", lease_seconds=60, limit=4),
    "record": lambda w: w.record(delivery_id=1, owner="d", attempt=1, delivered=True),
}
NOT_CALLS = {"dispose", "view", "position"}  # no database call; helpers inside a transaction


def public(cls: type) -> set[str]:
    return {n for n in dir(cls) if not n.startswith("_") and callable(getattr(cls, n))}


def test_the_lists_hold_every_public_call() -> None:
    assert public(JobStore) - NOT_CALLS == set(JOB_CALLS)
    assert public(KeyStore) == set(KEY_CALLS)
    assert public(DatasetStore) == set(DATASET_CALLS)
    assert public(WebhookStore) == set(WEBHOOK_CALLS)


def closed_port() -> int:
    """A port on 127.0.0.1 where nothing listens (just released by the kernel)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture(params=["sqlite", "postgres"])
def away_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    """SQLite: a "file" that is a folder (cannot be opened, even by root); PostgreSQL: a
    closed port."""
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path}"
    return f"postgresql+psycopg://postgres@127.0.0.1:{closed_port()}/test"


@pytest.fixture
def away(away_url: str) -> Iterator[Stores]:
    engine = make_engine(away_url)
    yield JobStore(engine), KeyStore(engine), DatasetStore(engine)
    engine.dispose()


def assert_unavailable(call: Callable[[], object]) -> None:
    with pytest.raises(StoreUnavailable) as info:
        call()
    assert isinstance(info.value.__cause__, DBAPIError), repr(info.value.__cause__)


@pytest.mark.parametrize("name", JOB_CALLS)
def test_every_job_call_says_store_unavailable(away: Stores, name: str) -> None:
    assert_unavailable(lambda: JOB_CALLS[name](away[0]))


@pytest.mark.parametrize("name", KEY_CALLS)
def test_every_key_call_says_store_unavailable(away: Stores, name: str) -> None:
    assert_unavailable(lambda: KEY_CALLS[name](away[1]))


@pytest.mark.parametrize("name", WEBHOOK_CALLS)
def test_every_webhook_call_says_store_unavailable(away_url: str, name: str) -> None:
    engine = make_engine(away_url)
    try:
        assert_unavailable(lambda: WEBHOOK_CALLS[name](WebhookStore(engine)))
    finally:
        engine.dispose()


@pytest.mark.parametrize("name", DATASET_CALLS)
def test_every_dataset_call_says_store_unavailable(away: Stores, name: str) -> None:
    assert_unavailable(lambda: DATASET_CALLS[name](away[2]))


def test_migrations_say_store_unavailable(away_url: str) -> None:
    assert_unavailable(lambda: migrate.upgrade(away_url))
    assert_unavailable(lambda: migrate.check(away_url))


class Terminator:
    """Terminates the PostgreSQL backend of the next statement the engine runs, just before
    it is sent (``pg_terminate_backend``, waiting until the backend is gone)."""

    def __init__(self, admin_url: str) -> None:
        self.admin_url, self.armed, self.done = admin_url, False, 0

    def __call__(self, conn: Any, *_: Any) -> None:
        if not self.armed:
            return
        self.armed = False
        pid = conn.connection.dbapi_connection.info.backend_pid
        with psycopg.connect(self.admin_url, autocommit=True) as admin:
            gone = admin.execute("SELECT pg_terminate_backend(%s, 5000)", (pid,)).fetchone()
        assert gone == (True,)
        self.done += 1


@pytest.mark.postgres
@pytest.mark.parametrize(
    "call",
    [
        pytest.param(lambda s, _: s.claim(owner="w", lease_seconds=60), id="claim"),
        pytest.param(lambda s, spec: s.submit_many([SubmitRequest(spec)]), id="submit_many"),
        pytest.param(lambda s, _: s.next_queued(), id="next_queued"),
        pytest.param(lambda s, _: s.recount_queue_depth(), id="recount"),
    ],
)
def test_a_connection_dropped_under_a_call_is_store_unavailable_and_changes_nothing(
    pg_url: str, make_spec: Callable[..., JobSpec], call: Callable[[JobStore, JobSpec], object]
) -> None:
    upgrade(pg_url)
    engine = make_engine(pg_url)
    store = JobStore(engine)
    try:
        job = store.submit(spec=make_spec())
        terminate = Terminator(libpq_url(pg_url))
        event.listen(engine, "before_cursor_execute", terminate)
        terminate.armed = True
        assert_unavailable(lambda: call(store, make_spec()))
        assert terminate.done == 1
        # the next call gets a new connection (the pool's pre-ping) and sees nothing changed
        assert [j.id for j in store.next_queued()] == [job.id]
        assert store.get(job_id=job.id).status is JobStatus.QUEUED
        assert [c.id for c in store.claim(owner="w", lease_seconds=60)] == [job.id]
    finally:
        engine.dispose()
