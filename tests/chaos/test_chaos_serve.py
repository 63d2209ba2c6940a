"""Fault 2: the whole ``gradq serve`` (API, dispatcher, local Ray) is SIGKILLed mid-run and
started again on the same data folder (SQLite queue, MLflow SQLite store).

Nothing gets a chance to clean up: the running jobs stay ``running`` in the database with
leases that nobody renews. The new process requeues them once the leases expire and they
resume from their checkpoints; queued jobs and jobs submitted after the restart run too.
"""

from __future__ import annotations

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
    kill_serve,
    record,
    serve,
    wait_until,
)
from deploy_stack import Stack, alive, descendants, processes

pytestmark = pytest.mark.timeout(300)


def test_serve_killed_and_restarted_on_the_same_folder_loses_nothing(stack: Stack) -> None:
    data = stack.folder / "data"
    env = chaos_env(data, RAY_TMPDIR=str(stack.ray_temp))
    data.mkdir()
    accepted: dict[str, int] = {}
    errors = ServerErrors()  # the 5xx answers this test's clients got

    def submit(http: httpx.Client, spec: dict) -> str:
        r = http.post("/v1/jobs", json=spec, headers={"Idempotency-Key": spec["name"]})
        assert r.status_code == 201, r.text
        accepted[r.json()["id"]] = spec["optimizer"]["epochs"]
        return str(r.json()["id"])

    with serve(stack, "serve", env, errors) as http:
        longs = [submit(http, digits(f"long-{i}", 50)) for i in range(2)]
        queued = [submit(http, iris(f"queued-{i}", seed=i)) for i in range(2)]

        def training() -> dict | None:
            now = jobs(http, longs)
            ok = all(j["status"] == "running" and (j.get("progress") or {}).get("epoch", 0) >= 3
                     for j in now.values())  # fmt: skip
            return now if ok else None

        before = wait_until("both long jobs to train 3 epochs", training, 180,
                            context=stack.logs)  # fmt: skip
        in_flight = sum(j["status"] not in ("succeeded", "failed", "cancelled")
                        for j in jobs(http, longs + queued).values())  # fmt: skip
    kill_serve(stack, "serve", [j["progress"]["pid"] for j in before.values()])
    killed_at = time.monotonic()

    with serve(stack, "serve-2", env, errors) as http:
        recover_s = time.monotonic() - killed_at  # until the API answers ready again
        # A client that retries its last submission with the same key gets the same job.
        r = http.post("/v1/jobs", json=iris("queued-1", seed=1),
                      headers={"Idempotency-Key": "queued-1"})  # fmt: skip
        assert r.status_code == 200 and r.json()["id"] == queued[1], r.text
        after = submit(http, iris("after-restart", seed=9))
        ids = longs + queued + [after]
        final = wait_until("every job to end", lambda: all_terminal(http, ids), 240,
                           context=stack.logs)  # fmt: skip
        checked = audit(http, env["GRADQ_MLFLOW_TRACKING_URI"], accepted)
    record({
        "fault": "gradq serve SIGKILL (process group) + restart on the same folder (SQLite)",
        "in_flight": in_flight, "accepted": len(accepted), **checked.counts,
        "http_5xx": errors.count, "recover_s": round(recover_s, 1),
        "checked": "events: one attempt at a time; 1 MLflow run/job, steps 1..n once; "
                   "resumed from checkpoint; idempotent resubmit returns the same job",
    })  # fmt: skip
    checked.assert_clean()
    errors.assert_none()
    for job_id in longs:
        assert final[job_id]["attempt"] == 2, final[job_id]
        assert final[job_id]["result"]["resumed_from_epoch"] >= 1, final[job_id]["result"]
    assert len(accepted) == 5


def test_serve_restarts_its_local_ray_when_its_raylet_dies(stack: Stack) -> None:
    """Fault 2b: the raylet of ``gradq serve``'s local Ray is SIGKILLed while a job trains.
    ``/readyz`` says the local Ray is restarting; jobs submitted meanwhile wait (none is failed
    as unschedulable), the training job is requeued, and all of them succeed on the new Ray."""
    data = stack.folder / "data"
    env = chaos_env(data, RAY_TMPDIR=str(stack.ray_temp))
    data.mkdir()
    accepted: dict[str, int] = {}
    errors = ServerErrors()

    def submit(http: httpx.Client, spec: dict) -> str:
        r = http.post("/v1/jobs", json=spec)
        assert r.status_code == 201, r.text
        accepted[r.json()["id"]] = spec["optimizer"]["epochs"]
        return str(r.json()["id"])

    with serve(stack, "serve", env, errors) as http:
        long = submit(http, digits("long", 40))

        def training() -> bool:
            j = jobs(http, [long])[long]
            return j["status"] == "running" and (j.get("progress") or {}).get("epoch", 0) >= 2

        wait_until("the long job to train 2 epochs", training, 180, context=stack.logs)
        serve_pid = stack.processes["serve"].pid
        table = processes()
        raylets = [p for p in descendants(serve_pid) if "/raylet " in f"{table[p][1]} "]
        assert len(raylets) == 1, [table[p][1][:80] for p in descendants(serve_pid)]
        os.kill(raylets[0], signal.SIGKILL)
        wait_until("the raylet to be gone", lambda: not alive(raylets[0]), 30)

        def not_ready() -> httpx.Response | None:
            r = http.get("/readyz")
            return r if r.status_code == 503 else None

        # the service learns of the loss at its next look at its Ray (not at once)
        down = wait_until("/readyz to say the local Ray is down", not_ready, 30,
                          context=stack.logs)  # fmt: skip
        during = [submit(http, iris(f"during-{i}", seed=i)) for i in range(2)]
        detail = down.json()["checks"]["ray"]["detail"]
        assert detail == "Ray is not ready: the local Ray is restarting: its raylet exited", detail
        wait_until("/readyz", lambda: http.get("/readyz").status_code == 200, 180,
                   context=stack.logs)  # fmt: skip
        ids = [long, *during]
        final = wait_until("every job to end", lambda: all_terminal(http, ids), 240,
                           context=stack.logs)  # fmt: skip
        checked = audit(http, env["GRADQ_MLFLOW_TRACKING_URI"], accepted)
    checked.assert_clean()
    errors.assert_none()
    for job_id, job in final.items():
        assert job["status"] == "succeeded", (job_id, job["error"], stack.logs())
    assert final[long]["attempt"] == 2, final[long]
