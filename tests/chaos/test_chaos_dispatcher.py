"""Fault 1: the dispatcher process is SIGKILLed while jobs train, then started again.

``gradq api`` and ``gradq dispatcher`` run as separate processes on PostgreSQL (a private
cluster) with an MLflow SQLite store. The dispatcher owns a local Ray: it is killed with its
Ray's processes and the attempts' worker processes at once. The leases of those attempts expire, the new dispatcher claims the
jobs again (attempt 2) and they resume from their checkpoints; the queued jobs run after.
"""

from __future__ import annotations

import contextlib
import os
import signal
import time

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
    kill_ours,
    private_postgres,
    private_postgres_missing,
    record,
    wait_until,
)
from deploy_stack import Stack, alive, descendants
from gradq_service import GRADQ

from db.errors import StaleAttempt
from db.session import make_engine
from db.store import JobStore

pytestmark = pytest.mark.timeout(300)


def test_dispatcher_killed_mid_training_resumes_every_job_once(stack: Stack) -> None:
    missing = private_postgres_missing()
    if missing:
        pytest.skip(f"no private PostgreSQL cluster: {missing}")
    folder = stack.folder
    with private_postgres() as pg:
        env = chaos_env(folder, GRADQ_DATABASE_URL=pg.database(),
                          RAY_TMPDIR=str(stack.ray_temp))  # fmt: skip
        stack.start("dispatcher", [GRADQ, "dispatcher"], env)
        # One after the other: both create the fresh MLflow SQLite store's schema at start
        wait_until("the dispatcher", lambda: "running (Ray" in stack.log("dispatcher"), 180,
                   context=stack.logs)  # fmt: skip
        url = f"http://127.0.0.1:{stack.start_server('api', [GRADQ, 'api'], env)}"
        errors = ServerErrors()  # the 5xx answers this test's client got
        with errors.client(url) as http:
            wait_until("the API", lambda: http.get("/healthz").is_success, 180,
                       context=stack.logs)  # fmt: skip
            stack.assert_loopback_only()
            run(http, stack, env, errors)


def run(http: httpx.Client, stack: Stack, env: dict[str, str], errors: ServerErrors) -> None:
    specs = {"long-a": digits("long-a", 150), "long-b": digits("long-b", 150)} | {
        f"queued-{i}": iris(f"queued-{i}", epochs=6, seed=i) for i in range(3)
    }
    accepted: dict[str, int] = {}
    for spec in specs.values():  # two CPUs: the long ones run, the others wait
        r = http.post("/v1/jobs", json=spec)
        assert r.status_code == 201, r.text
        accepted[r.json()["id"]] = spec["optimizer"]["epochs"]
    ids = list(accepted)
    longs = ids[:2]

    def training() -> dict[str, dict] | None:
        now = jobs(http, longs)
        epochs = [(j.get("progress") or {}).get("epoch", 0) for j in now.values()]
        return now if all(j["status"] == "running" for j in now.values()) and min(
            epochs) >= 3 else None  # fmt: skip

    before = wait_until("both long jobs to train 3 epochs", training, 180, context=stack.logs)
    pids = {i: j["progress"]["pid"] for i, j in before.items()}
    in_flight = sum(j["status"] not in ("succeeded", "failed", "cancelled")
                    for j in jobs(http, ids).values())  # fmt: skip
    dispatcher = stack.processes["dispatcher"]
    # The dispatcher and its local Ray with it, at once, with no warning: Ray's daemons and
    # its worker processes (the attempts) run in sessions of their own; an attempt killed only
    # after the dispatcher could still finish its job under its valid lease meanwhile (as
    # attempt 1: correct, nothing runs twice; seen on a fast host), and no lease would expire.
    for pid in {dispatcher.pid, *descendants(dispatcher.pid), *pids.values()}:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.kill(pid, signal.SIGKILL)
    dispatcher.wait(timeout=30)
    stack.stopped.add("dispatcher")
    wait_until("the killed dispatcher's attempts to die",
               lambda: not any(alive(p) for p in pids.values()), 60, context=stack.logs)  # fmt: skip
    kill_ours(str(stack.ray_temp))  # anything of the old Ray left (daemons): gone
    killed_at = time.monotonic()
    stack.start("dispatcher-2", [GRADQ, "dispatcher"], env)

    def resumed() -> bool:
        now = jobs(http, longs)
        return all(j["attempt"] >= 2 and j["status"] in ("running", "succeeded")
                   for j in now.values())  # fmt: skip

    wait_until("the long jobs' second attempts", resumed, 180, context=stack.logs)
    recover_s = time.monotonic() - killed_at
    final = wait_until("every job to end", lambda: all_terminal(http, ids), 240,
                       context=stack.logs)  # fmt: skip
    tracking = env["GRADQ_MLFLOW_TRACKING_URI"]
    checked = audit(http, tracking, accepted)
    record({
        "fault": "dispatcher SIGKILL + restart (PostgreSQL)", "in_flight": in_flight,
        "accepted": len(ids), **checked.counts, "http_5xx": errors.count,
        "recover_s": round(recover_s, 1),
        "checked": "events: one attempt at a time; fencing; 1 MLflow run/job, steps 1..n once; "
                   "resumed from checkpoint",
    })  # fmt: skip
    checked.assert_clean()
    errors.assert_none()
    engine = make_engine(env["GRADQ_DATABASE_URL"])
    store = JobStore(engine)
    for job_id in longs:
        job = final[job_id]
        assert job["attempt"] == 2, job
        assert job["result"]["resumed_from_epoch"] >= 1, job["result"]  # from its checkpoint
        with pytest.raises(StaleAttempt):  # fencing: the killed attempt can write nothing
            store.heartbeat(job_id=job_id, attempt=1, lease_seconds=60, progress={"epoch": 99})
    engine.dispose()
    for job_id in ids[2:]:
        assert final[job_id]["attempt"] == 1, final[job_id]
