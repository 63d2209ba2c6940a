"""Webhooks end to end, on SQLite and PostgreSQL: the app (its deliverer thread), a real
receiver on 127.0.0.1, a real dispatcher with a local Ray running a real job.

The receiver is down for 30 s of real time while jobs and a sweep end (one job trained by the
dispatcher, the others ended through the store); once it is back it gets every event, each
signed with the webhook's secret, each event id at least once, and twice only where the
delivery log counts an attempt of unknown outcome (here: the receiver's first answer after its
return comes after the deliverer's timeout). The retry schedule is shortened by the settings.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import socket
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient

from api.main import create_app
from api.settings import Settings
from api.webhooks import Deliverer
from core.spec import parse_spec
from db.migrate import upgrade
from db.session import make_engine
from db.store import JobStore
from db.sweeps import SweepStore
from db.webhooks import EVENTS, WebhookStore
from workers.dispatcher import Dispatcher, DispatcherConfig
from workers.task import WorkerConfig

pytestmark = pytest.mark.slow

DOWN_SECONDS = 30.0
IRIS = {
    "name": "iris-hooked", "dataset": "iris", "model": {"hidden": [8]},
    "optimizer": {"epochs": 3, "batch_size": 16},
}  # fmt: skip


class Receiver:
    """A webhook receiver on 127.0.0.1: records each POST (event id header, signature
    header, body) and answers ``answer`` (200; a redirect to ``location``); ``stall`` makes
    its next answer wait that long."""

    def __init__(self) -> None:
        self.got: list[tuple[str, str, bytes]] = []
        self.types: dict[str, str] = {}  # Gradq-Event by event id
        self.hosts: list[str] = []  # the Host header of each
        self.answer, self.location = 200, ""
        self.stall = 0.0
        self.lock = threading.Lock()
        self.server: ThreadingHTTPServer | None = None
        self.port = 0

    def start(self) -> None:
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers["Content-Length"]))
                with receiver.lock:
                    receiver.types[self.headers["Gradq-Event-Id"]] = self.headers["Gradq-Event"]
                    receiver.got.append(
                        (self.headers["Gradq-Event-Id"], self.headers["Gradq-Signature"], body)
                    )
                    stall, receiver.stall = receiver.stall, 0.0
                    receiver.hosts.append(self.headers["Host"])
                time.sleep(stall)
                self.send_response(receiver.answer)
                if receiver.answer in (301, 302, 307, 308):
                    self.send_header("Location", receiver.location)
                self.send_header("Content-Length", "0")
                self.end_headers()

            def log_message(self, *_: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", self.port), Handler)
        self.port = self.server.server_address[1]
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def stop(self) -> None:
        """Down: the port closed, a connection is refused."""
        assert self.server is not None
        self.server.shutdown()
        self.server.server_close()

    def ids(self) -> list[str]:
        with self.lock:
            return [event_id for event_id, _, _ in self.got]


def verified(secret: str, header: str, body: bytes) -> bool:
    """The receiver's check, as README.md shows it."""
    fields = dict(part.split("=", 1) for part in header.split(","))
    expected = hmac.new(
        secret.encode(), fields["t"].encode() + b"." + body, hashlib.sha256
    ).hexdigest()
    return hmac.compare_digest(expected, fields["v1"])


def until(check: Callable[[], bool], timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.1)


@pytest.fixture(params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
def db_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    url = (
        request.getfixturevalue("pg_url")
        if request.param == "postgres"
        else f"sqlite:///{tmp_path}/gradq.db"
    )
    upgrade(url)
    return url


@pytest.fixture
def dispatcher(ray_local: None, db_url: str, tmp_path: Path) -> Iterator[JobStore]:
    """A dispatcher thread on the database; its store."""
    import ray

    store = JobStore(make_engine(db_url))
    worker = WorkerConfig(
        database_url=db_url, tracking_uri=f"sqlite:///{tmp_path}/mlflow.db",
        artifact_root=str(tmp_path / "artifacts"), lease_seconds=10.0, heartbeat_seconds=0.5,
    )  # fmt: skip
    config = DispatcherConfig(worker=worker, poll_seconds=0.1, warm_workers=1, unsatisfiable="wait")
    d = Dispatcher(config, store)
    d.connect()
    stop = threading.Event()
    thread = threading.Thread(target=d.run, args=(stop,), daemon=True)
    thread.start()
    yield store
    stop.set()
    thread.join(timeout=30)
    for attempt in d.inflight.values():
        ray.cancel(attempt.ref, force=True)
    store.dispose()


@pytest.fixture
def store(db_url: str) -> Iterator[JobStore]:
    """The store alone (no dispatcher)."""
    store = JobStore(make_engine(db_url))
    yield store
    store.dispose()


# a job no node of the local Ray fits: the dispatcher leaves it queued, the test ends it
UNFIT = parse_spec({"dataset": "iris", "resources": {"cpus": 64}})


@pytest.fixture
def client(db_url: str, tmp_path: Path) -> Iterator[TestClient]:
    settings = Settings(
        database_url=db_url, mlflow_tracking_uri=f"sqlite:///{tmp_path}/mlflow.db",
        allowed_hosts="testserver", webhooks_allow_private=True,
        webhooks_backoff_seconds=0.25, webhooks_backoff_cap_seconds=2.0,
        webhooks_timeout_seconds=2.0, webhooks_poll_seconds=0.1,
    )  # fmt: skip
    with TestClient(create_app(settings)) as c:
        yield c


def test_a_receiver_down_for_30_s_gets_every_event_after(
    client: TestClient, dispatcher: JobStore, db_url: str
) -> None:
    store, sweeps = dispatcher, SweepStore(make_engine(db_url))
    receiver = Receiver()
    receiver.start()
    r = client.post("/v1/webhooks", json={"url": f"http://127.0.0.1:{receiver.port}/hook"})
    assert r.status_code == 201, r.text
    hook_id, secret = r.json()["id"], r.json()["secret"]
    spec = UNFIT

    first = store.submit(spec=spec).id
    store.request_cancel(job_id=first)
    until(lambda: f"job.cancelled:{first}" in receiver.ids(), 30, "the first event")

    receiver.stop()
    down_at = time.monotonic()
    trained = store.submit(spec=parse_spec(IRIS)).id  # the dispatcher runs it meanwhile
    expected = {f"job.cancelled:{first}", f"job.succeeded:{trained}"}
    failed = store.submit(spec=spec).id
    store.fail_queued(job_id=failed, reason="no node can run it")
    expected.add(f"job.failed:{failed}")
    time.sleep(5)
    cancelled = store.submit(spec=spec).id
    store.request_cancel(job_id=cancelled)
    expected.add(f"job.cancelled:{cancelled}")
    time.sleep(5)
    pruned = store.submit(spec=spec).id
    (claimed,) = store.claim(owner="test", lease_seconds=60, ids=[pruned])
    store.finish(job_id=pruned, attempt=claimed.attempt, status="pruned")
    expected.add(f"job.pruned:{pruned}")
    time.sleep(5)
    sweep = sweeps.create(spec={"name": "s"}, name="s")
    until(lambda: sweeps.claim(owner="ctl", lease_seconds=60) == [sweep.id], 10, "the sweep")
    sweeps.finish(sweep_id=sweep.id, owner="ctl", status="succeeded")
    expected.add(f"sweep.succeeded:{sweep.id}")

    def ended() -> bool:
        return store.get(job_id=trained).status.value in ("succeeded", "failed", "cancelled")

    until(ended, 120, "the trained job")
    assert store.get(job_id=trained).status.value == "succeeded"
    # down 30 s in all, and long enough after the last event for it to be tried
    time.sleep(max(3.0, DOWN_SECONDS - (time.monotonic() - down_at)))

    log = client.get(f"/v1/webhooks/{hook_id}/deliveries").json()["items"]
    waiting = {d["event_id"]: d for d in log if d["delivered_at"] is None}
    assert set(waiting) == expected - {f"job.cancelled:{first}"}  # nothing got through
    assert all("ConnectError" in d["last_error"] for d in waiting.values())
    assert all(d["next_attempt_at"] is not None for d in waiting.values())
    assert max(d["attempts"] for d in waiting.values()) >= 3  # retried while down

    receiver.stall = 3.0  # its first answer comes after the deliverer's 2 s timeout
    receiver.start()

    def all_delivered() -> bool:
        items = client.get(f"/v1/webhooks/{hook_id}/deliveries").json()["items"]
        return all(d["delivered_at"] is not None for d in items)

    until(all_delivered, 60, "every delivery")
    log = client.get(f"/v1/webhooks/{hook_id}/deliveries").json()["items"]
    assert {d["event_id"] for d in log} == expected
    with receiver.lock:
        got = list(receiver.got)
    counts = Counter(event_id for event_id, _, _ in got)
    assert set(counts) == expected  # every event, at least once
    uncertain = {d["event_id"] for d in log if d["uncertain"] > 0}
    assert {e for e, n in counts.items() if n > 1} <= uncertain  # twice only if unknown
    assert uncertain  # the stalled answer: an attempt of unknown outcome, sent again
    for event_id, header, body in got:
        assert verified(secret, header, body), event_id
        event = json.loads(body)
        assert event["id"] == event_id and event_id.startswith(event["type"] + ":")
        assert receiver.types[event_id] == event["type"]
    trained_event = next(json.loads(b) for e, _, b in got if e == f"job.succeeded:{trained}")
    job = trained_event["data"]["job"]
    assert (job["id"], job["status"], job["name"]) == (trained, "succeeded", "iris-hooked")
    assert job["result"]["epochs"] == 3 and "val_loss" in job["result"]["metrics"]


def test_rotation_changes_the_signing_secret(client: TestClient, store: JobStore) -> None:
    receiver = Receiver()
    receiver.start()
    hook = client.post(
        "/v1/webhooks",
        json={"url": f"http://127.0.0.1:{receiver.port}/", "events": ["job.cancelled"]},
    ).json()
    spec = UNFIT
    before = store.submit(spec=spec).id
    store.request_cancel(job_id=before)
    until(lambda: len(receiver.ids()) == 1, 30, "the first event")
    rotated = client.post(f"/v1/webhooks/{hook['id']}/rotate").json()["secret"]
    after = store.submit(spec=spec).id
    store.request_cancel(job_id=after)
    until(lambda: f"job.cancelled:{after}" in receiver.ids(), 30, "the second event")
    with receiver.lock:
        signed = {event_id: (header, body) for event_id, header, body in receiver.got}
    old_header, old_body = signed[f"job.cancelled:{before}"]
    new_header, new_body = signed[f"job.cancelled:{after}"]
    assert verified(hook["secret"], old_header, old_body)
    assert verified(rotated, new_header, new_body)
    assert not verified(hook["secret"], new_header, new_body)
    receiver.stop()


def test_an_address_turned_private_is_refused_at_delivery(
    tmp_path: Path, db_url: str, store: JobStore
) -> None:
    """A webhook registered while private addresses were allowed, delivered by a service
    that refuses them: nothing is sent, the log says why and keeps it for a retry."""
    receiver = Receiver()
    receiver.start()
    common: dict[str, Any] = dict(
        database_url=db_url, mlflow_tracking_uri=f"sqlite:///{tmp_path}/mlflow.db",
        allowed_hosts="testserver", webhooks_poll_seconds=0.1,
    )  # fmt: skip
    with TestClient(create_app(Settings(**common, webhooks_deliver=False,
                                        webhooks_allow_private=True))) as c:  # fmt: skip
        hook = c.post("/v1/webhooks", json={"url": f"http://localhost:{receiver.port}/"}).json()
    with TestClient(create_app(Settings(**common))) as c:
        job = store.submit(spec=UNFIT).id
        store.request_cancel(job_id=job)

        def refused() -> list[Any]:
            items = c.get(f"/v1/webhooks/{hook['id']}/deliveries").json()["items"]
            return [d for d in items if d["attempts"] >= 1 and d["last_error"]]

        until(lambda: bool(refused()), 30, "an attempt")
        [d] = refused()
        assert d["last_error"].startswith("refused: its host localhost resolves to")
        assert d["delivered_at"] is None and d["next_attempt_at"] is not None
    assert receiver.ids() == []
    receiver.stop()


def test_a_delivery_is_given_up_after_the_last_attempt(
    tmp_path: Path, db_url: str, store: JobStore
) -> None:
    """Against a port where nothing listens, with two attempts allowed: the second failure
    ends it, kept in the log with its error and no next attempt."""
    receiver = Receiver()
    receiver.start()
    receiver.stop()  # its port is closed now
    settings = Settings(
        database_url=db_url, webhooks_allow_private=True, webhooks_max_attempts=2,
        webhooks_backoff_seconds=0.1, webhooks_backoff_cap_seconds=0.1,
    )  # fmt: skip
    engine = make_engine(db_url)
    hooks, sweeps = WebhookStore(engine), SweepStore(engine)
    hook = hooks.create(tenant="default", url=f"http://127.0.0.1:{receiver.port}/", events=EVENTS)
    job = store.submit(spec=UNFIT).id
    store.request_cancel(job_id=job)
    deliverer = Deliverer(settings, hooks, store, sweeps)
    try:
        assert deliverer.run_once() == 1
        until(lambda: deliverer.run_once() == 1, 10, "the second attempt")
        assert deliverer.run_once() == 0
        [d], _ = hooks.deliveries(webhook_id=hook.id, tenant="default")
    finally:
        deliverer.stop()
        engine.dispose()
    assert (d.attempts, d.delivered_at, d.next_attempt_at) == (2, None, None)
    assert d.gave_up_at is not None and "ConnectError" in (d.last_error or "")


def resolving(address: str) -> Callable[..., list[Any]]:
    def resolve(host: str, port: int, **_: Any) -> list[Any]:
        return [(socket.AF_INET, socket.SOCK_STREAM, 6, "", (address, port))]

    return resolve


def test_an_attempt_goes_to_the_address_checked_and_no_redirect_is_followed(
    db_url: str, store: JobStore
) -> None:
    """The URL's name resolved by the deliverer (to the receiver, here): the request goes to
    that address with the name as its Host. A redirect (to another receiver) is an answer
    that failed, not followed."""
    receiver, elsewhere = Receiver(), Receiver()
    receiver.start()
    elsewhere.start()
    settings = Settings(database_url=db_url, webhooks_allow_private=True)
    engine = make_engine(db_url)
    hooks, sweeps = WebhookStore(engine), SweepStore(engine)
    url = f"http://hooks.gradq.invalid:{receiver.port}/in"  # no DNS knows this name
    hook = hooks.create(tenant="default", url=url, events=EVENTS)
    deliverer = Deliverer(settings, hooks, store, sweeps, resolve=resolving("127.0.0.1"))
    try:
        delivered = store.submit(spec=UNFIT).id
        store.request_cancel(job_id=delivered)
        assert deliverer.run_once() == 1
        assert receiver.ids() == [f"job.cancelled:{delivered}"]
        assert receiver.hosts == [f"hooks.gradq.invalid:{receiver.port}"]

        receiver.answer, receiver.location = 307, f"http://127.0.0.1:{elsewhere.port}/"
        redirected = store.submit(spec=UNFIT).id
        store.request_cancel(job_id=redirected)
        assert deliverer.run_once() == 1
        log, _ = hooks.deliveries(webhook_id=hook.id, tenant="default")
    finally:
        deliverer.stop()
        engine.dispose()
        receiver.stop()
        elsewhere.stop()
    assert elsewhere.ids() == []
    last = next(d for d in log if d.subject_id == redirected)
    assert (last.last_status_code, last.last_error, last.delivered_at) == (307, "HTTP 307", None)
    assert last.next_attempt_at is not None  # tried again later
