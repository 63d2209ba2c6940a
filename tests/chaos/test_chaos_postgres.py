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
    ServerErrors,
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
from deploy_stack import Stack
from gradq_service import GRADQ

pytestmark = pytest.mark.timeout(300)

DOWN_S = 8.0


class Submitter(threading.Thread):
    """A client that submits small jobs one after another; each with its own key, retried
    with that key after a 503 or a broken connection until it is accepted."""

    def __init__(self, url: str, n: int, errors: ServerErrors) -> None:
        super().__init__(daemon=True)
        self.url, self.n, self.errors = url, n, errors
        self.stop = threading.Event()
        self.accepted: dict[str, int] = {}
        self.answers: list[tuple[float, int, Any]] = []  # (time, status, body)
        self.transport_errors = 0

    def run(self) -> None:
        with self.errors.client(self.url) as http:
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
        port = stack.start_server("serve", [GRADQ, "serve", "--no-mlflow-ui"], env)
        url = f"http://127.0.0.1:{port}"
        errors = ServerErrors(expected=outage_answer)  # the 5xx answers the clients got
        with errors.client(url) as http:
            wait_until("gradq serve", lambda: http.get("/readyz").is_success, 180,
                       context=stack.logs)  # fmt: skip
            stack.assert_loopback_only()
            run(http, url, pg, stack, env, errors)


def outage_answer(response: httpx.Response) -> bool:
    """A 503: what the outage is meant to give (each one's body is checked below)."""
    return response.status_code == 503


def run(
    http: httpx.Client, url: str, pg: Any, stack: Stack, env: dict[str, str], errors: ServerErrors
) -> None:
    accepted: dict[str, int] = {}
    for i in range(2):
        r = http.post("/v1/jobs", json=digits(f"long-{i}", 40))
        assert r.status_code == 201, r.text
        accepted[r.json()["id"]] = 40
    longs = list(accepted)
    wait_until("the long jobs to train", lambda: all(
        (j.get("progress") or {}).get("epoch", 0) >= 2 for j in jobs(http, longs).values()),
        180, context=stack.logs)  # fmt: skip
    clients = [Submitter(url, n, errors) for n in range(3)]
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

    def accepted_again() -> tuple[float, Any] | None:  # the first 201 after the restart
        after = [(t, b) for c in clients for t, s, b in list(c.answers)
                 if t > started_at and s == 201]  # fmt: skip
        return min(after, key=lambda answer: answer[0], default=None)

    first_at, first = wait_until("a submission accepted again", accepted_again, 60,
                                 context=stack.logs)  # fmt: skip
    recover_s = first_at - started_at
    stored = http.get(f"/v1/jobs/{first['id']}")  # accepted after the restart: it is stored
    assert stored.status_code == 200, stored.text
    assert (stored.json()["name"], stored.json()["spec"]) == (first["name"], first["spec"])
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
    for c in clients:
        accepted.update(c.accepted)
    ids = list(accepted)
    wait_until("every accepted job to end", lambda: all_terminal(http, ids), 240,
               context=stack.logs)  # fmt: skip
    checked = audit(http, env["GRADQ_MLFLOW_TRACKING_URI"], accepted)
    listed = {j["id"] for j in http.get("/v1/jobs", params={"limit": 200}).json()["items"]}
    checked.duplicated += [  # a job no answer accepted: a retried key made a second one
        f"job {job_id}: listed, but no answer accepted it" for job_id in sorted(listed - set(ids))
    ]
    checked.lost.update({job_id: "not listed" for job_id in set(ids) - listed})
    record({
        "fault": "PostgreSQL stop -m fast, 8 s down, start (jobs running, 3 clients submitting)",
        "in_flight": in_flight, "accepted": len(ids), **checked.counts,
        "http_5xx": errors.count, "http_503": len(unavailable),
        "recover_s": round(recover_s, 1), "down_s": round(started_at - stopped_at, 1),
        "checked": "503 + JSON body while down; no other 5xx; self-recovery; every accepted "
                   "job succeeded once (events, 1 MLflow run, steps 1..n once)",
    })  # fmt: skip
    checked.assert_clean()
    errors.assert_none()
