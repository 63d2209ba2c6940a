"""Fault 3: PostgreSQL restarts while jobs train and clients submit.

A private cluster (initdb'd for this test on a free 127.0.0.1 port, so that the shared server
other tests use is never touched) is stopped (``pg_ctl stop -m fast``: every session is cut)
and started again a few seconds later. Meanwhile clients keep submitting, each request with
an Idempotency-Key, retrying the same key until an answer says accepted. While the database
is away the API answers 503 with a JSON body that says so (never a 500, never a
traceback); it recovers by itself (pre-pinged pool); every job it accepted ends, once.
"""

from __future__ import annotations

import threading
import time
import uuid
from typing import Any

import httpx
import pytest
from chaos_harness import (
    all_terminal,
    audit,
    chaos_env,
    digits,
    iris,
    jobs,
    private_postgres,
    private_postgres_missing,
    record,
    wait_until,
)
from deploy_stack import Stack, free_port
from gradq_service import GRADQ

pytestmark = pytest.mark.timeout(300)

DOWN_S = 8.0


class Submitter(threading.Thread):
    """A client that submits small jobs one after another; each with its own key, retried
    with that key after a 503 or a broken connection until it is accepted."""

    def __init__(self, url: str, n: int) -> None:
        super().__init__(daemon=True)
        self.url, self.n = url, n
        self.stop = threading.Event()
        self.accepted: dict[str, int] = {}
        self.answers: list[tuple[float, int, Any]] = []  # (time, status, body)
        self.transport_errors = 0

    def run(self) -> None:
        with httpx.Client(base_url=self.url, timeout=30) as http:
            i = 0
            while not self.stop.is_set():
                key = f"c{self.n}-{i}-{uuid.uuid4().hex[:6]}"
                spec = iris(f"client-{self.n}-{i}", epochs=4, seed=i)
                while not self.stop.is_set():
                    try:
                        r = http.post("/v1/jobs", json=spec, headers={"Idempotency-Key": key})
                    except httpx.TransportError:
                        self.transport_errors += 1
                        time.sleep(0.2)
                        continue
                    body = _json(r)
                    self.answers.append((time.monotonic(), r.status_code, body))
                    if r.status_code in (200, 201):
                        self.accepted[body["id"]] = 4
                        break
                    time.sleep(0.2)
                i += 1
                time.sleep(1.0)


def _json(r: httpx.Response) -> Any:
    try:
        return r.json()
    except ValueError:
        return r.text


def test_postgres_restart_gives_503_then_recovers_and_loses_no_job(stack: Stack) -> None:
    missing = private_postgres_missing()
    if missing:
        pytest.skip(f"no private PostgreSQL cluster: {missing}")
    with private_postgres() as pg:
        env = chaos_env(stack.folder, GRADQ_DATABASE_URL=pg.database(),
                          RAY_TMPDIR=str(stack.ray_temp))  # fmt: skip
        port = free_port()
        url = f"http://127.0.0.1:{port}"
        stack.start("serve", [GRADQ, "serve", "--no-mlflow-ui", "--port", str(port)], env)
        with httpx.Client(base_url=url, timeout=30) as http:
            wait_until("gradq serve", lambda: http.get("/readyz").is_success, 180,
                       context=stack.logs)  # fmt: skip
            run(http, url, pg, stack, env)


def run(http: httpx.Client, url: str, pg: Any, stack: Stack, env: dict[str, str]) -> None:
    accepted: dict[str, int] = {}
    for i in range(2):
        r = http.post("/v1/jobs", json=digits(f"long-{i}", 40))
        assert r.status_code == 201, r.text
        accepted[r.json()["id"]] = 40
    longs = list(accepted)
    wait_until("the long jobs to train", lambda: all(
        (j.get("progress") or {}).get("epoch", 0) >= 2 for j in jobs(http, longs).values()),
        180, context=stack.logs)  # fmt: skip
    clients = [Submitter(url, n) for n in range(3)]
    for c in clients:
        c.start()
    time.sleep(2.0)
    in_flight = sum(j["status"] not in ("succeeded", "failed", "cancelled")
                    for j in jobs(http, longs + [k for c in clients for k in c.accepted]).values())  # fmt: skip
    pg.stop("fast")  # every session is cut; new connections are refused
    stopped_at = time.monotonic()
    down = http.get(f"/v1/jobs/{longs[0]}")
    assert down.status_code == 503, down.text
    assert down.headers["content-type"].startswith("application/json")
    assert down.json()["error"]["code"] == "database_unavailable", down.text
    assert "Traceback" not in down.text
    time.sleep(DOWN_S)
    pg.start()
    started_at = time.monotonic()
    ok = wait_until("a submission accepted again", lambda: any(
        t > started_at and s == 201 for c in clients for t, s, _ in list(c.answers)), 60,
        context=stack.logs)  # fmt: skip
    assert ok
    recover_s = min(t for c in clients for t, s, _ in list(c.answers)
                    if t > started_at and s == 201) - started_at  # fmt: skip
    time.sleep(3.0)
    for c in clients:
        c.stop.set()
    for c in clients:
        c.join(timeout=60)
    answers = [(s, b) for c in clients for _, s, b in c.answers]
    unavailable = [b for s, b in answers if s == 503]
    assert unavailable, "no request reached the API while the database was down"
    assert all(isinstance(b, dict) and b["error"]["code"] == "database_unavailable"
               for b in unavailable), unavailable[:3]  # fmt: skip
    server_errors = [(s, b) for s, b in answers if s >= 500 and s != 503]
    assert server_errors == [], server_errors[:3]
    for c in clients:
        accepted.update(c.accepted)
    ids = list(accepted)
    wait_until("every accepted job to end", lambda: all_terminal(http, ids), 240,
               context=stack.logs)  # fmt: skip
    audit(http, env["GRADQ_MLFLOW_TRACKING_URI"], accepted)
    listed = http.get("/v1/jobs", params={"limit": 200}).json()["items"]
    assert {j["id"] for j in listed} == set(ids)  # nothing more (no duplicate) and nothing less
    record({
        "fault": "PostgreSQL stop -m fast, 8 s down, start (jobs running, 3 clients submitting)",
        "in_flight": in_flight, "accepted": len(ids), "lost": 0, "duplicated": 0,
        "http_5xx": 0, "http_503": len(unavailable),
        "recover_s": round(recover_s, 1), "down_s": round(started_at - stopped_at, 1),
        "checked": "503 + JSON body while down; no other 5xx; self-recovery; every accepted "
                   "job succeeded once (events, 1 MLflow run, steps 1..n once)",
    })  # fmt: skip
