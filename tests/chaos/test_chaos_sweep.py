"""Fault 3: ``gradq serve`` is SIGKILLed mid-sweep and started again on the same data folder.

At the kill some trials have ended, some are training and some are not made yet. Nothing
gets a chance to clean up: the sweep keeps the dead controller's lease and its running
trials keep their attempts' leases. The new process's controller takes the sweep over and
the sweep ends.

The audit: the sweep succeeded; its trials are numbered 0..n-1, each once, each one job
(the job listing holds no other job of the sweep) ended by exactly one terminal event; each
trial job passes the suite's audit (``chaos_harness.audit``: succeeded, one attempt at a
time, one MLflow run, each learning-curve step once); MLflow holds one parent run of the
sweep and, under it, exactly one live child run per trial job; no point of the space was
drawn twice; the sweep's best is the best succeeded trial's objective.
"""

from __future__ import annotations

import time
from collections import Counter
from typing import Any

import httpx
import pytest
from chaos_harness import (
    TERMINAL,
    ServerErrors,
    audit,
    chaos_env,
    digits,
    kill_serve,
    record,
    serve,
    wait_until,
)
from deploy_stack import Stack
from mlflow import MlflowClient
from mlflow.entities import ViewType

from db.sweeps import trial_job_id

pytestmark = pytest.mark.timeout(600)

TRIALS = 10
EPOCHS = 25
SWEEP_DONE = ("succeeded", "failed", "cancelled")


def sweep_spec() -> dict[str, Any]:
    base = digits("trial", EPOCHS)
    del base["name"]  # each trial is named after the sweep
    base["gradcheck"] = {"at_start": False, "every_steps": 0}
    return {
        "name": "chaos-sweep",
        "base": base,
        "space": {
            "optimizer.lr": {"loguniform": [0.001, 0.02]},
            "seed": {"choice": [0, 1, 2]},
        },
        "search": {"method": "random", "trials": TRIALS, "parallel": 3, "seed": 5},
        "objective": {"metric": "val_accuracy", "mode": "max"},
    }


def trials(http: httpx.Client, sweep_id: str) -> list[dict[str, Any]]:
    r = http.get(f"/v1/sweeps/{sweep_id}/trials", params={"limit": 1000})
    assert r.status_code == 200 and r.json()["next_cursor"] is None, r.text
    return list(r.json()["items"])


def every_job(http: httpx.Client) -> list[dict[str, Any]]:
    out: list[dict[str, Any]] = []
    cursor: str | None = None
    while True:
        params: dict[str, Any] = {"limit": 200, **({"cursor": cursor} if cursor else {})}
        r = http.get("/v1/jobs", params=params)
        assert r.status_code == 200, r.text
        out += r.json()["items"]
        cursor = r.json()["next_cursor"]
        if cursor is None:
            return out


def test_serve_killed_mid_sweep_makes_every_trial_once(stack: Stack) -> None:
    data = stack.folder / "data"
    env = chaos_env(data, RAY_TMPDIR=str(stack.ray_temp))
    data.mkdir()
    errors = ServerErrors()  # the 5xx answers this test's clients got

    with serve(stack, "serve", env, errors) as http:
        r = http.post("/v1/sweeps", json=sweep_spec())
        assert r.status_code == 201, r.text
        sweep_id = r.json()["id"]

        def mid_sweep() -> list[dict[str, Any]] | None:
            now = trials(http, sweep_id)
            ended = [t for t in now if t["status"] in (*TERMINAL, "pruned")]
            training = [t for t in now if t["status"] == "running" and (t["epoch"] or 0) >= 1]
            return now if len(ended) >= 2 and training and len(now) < TRIALS else None

        before = wait_until("2 trials ended and one training", mid_sweep, 300,
                            context=stack.logs)  # fmt: skip
        attempts = []
        for t in before:
            if t["status"] == "running":
                job = http.get(f"/v1/jobs/{t['id']}").json()
                if job["status"] == "running" and (job.get("progress") or {}).get("pid"):
                    attempts.append(job["progress"]["pid"])
    kill_serve(stack, "serve", attempts)
    killed_at = time.monotonic()
    at_kill = Counter(t["status"] for t in before)

    with serve(stack, "serve-2", env, errors) as http:
        recover_s = time.monotonic() - killed_at  # until the API answers ready again

        def sweep_ended() -> dict[str, Any] | None:
            r = http.get(f"/v1/sweeps/{sweep_id}")
            assert r.status_code == 200, r.text
            return r.json() if r.json()["status"] in SWEEP_DONE else None

        sweep = wait_until("the sweep to end", sweep_ended, 480, context=stack.logs)
        done_s = time.monotonic() - killed_at
        final = trials(http, sweep_id)
        ids = [t["id"] for t in final]
        listed = Counter(
            job["id"]
            for job in every_job(http)
            if ((job["spec"] or {}).get("trial") or {}).get("sweep_id") == sweep_id
        )
        terminal_events = {}
        for job_id in ids:
            r = http.get(f"/v1/jobs/{job_id}/events")
            assert r.status_code == 200, r.text
            terminal_events[job_id] = [
                e for e in r.json() if e["to_status"] in (*TERMINAL, "pruned")
            ]
        checked = audit(http, env["GRADQ_MLFLOW_TRACKING_URI"], dict.fromkeys(ids, EPOCHS))

    client = MlflowClient(tracking_uri=env["GRADQ_MLFLOW_TRACKING_URI"])
    experiments = [e.experiment_id for e in client.search_experiments(ViewType.ALL)]
    parents = client.search_runs(
        experiments, f"tags.`gradq.sweep_run` = '{sweep_id}'", run_view_type=ViewType.ALL
    )
    children = client.search_runs(
        experiments,
        f"tags.`mlflow.parentRunId` = '{sweep['mlflow_run_id']}'",
        run_view_type=ViewType.ACTIVE_ONLY,
        max_results=1000,
    )
    child_runs = Counter(run.data.tags.get("gradq.job_id") for run in children)
    record({
        "fault": "gradq serve SIGKILL mid-sweep + restart on the same folder (SQLite)",
        "in_flight": at_kill["queued"] + at_kill["running"], "accepted": len(final),
        "at_kill": dict(sorted(at_kill.items())), **checked.counts,
        "http_5xx": errors.count, "recover_s": round(recover_s, 1),
        "sweep_done_s": round(done_s, 1),
        "checked": "trials 0..n-1 once, one job each, one terminal event each; "
                   "1 parent MLflow run, 1 live child run per trial; best = best trial",
    })  # fmt: skip

    assert sweep["status"] == "succeeded", (sweep["error"], stack.logs())
    assert [t["trial"] for t in final] == list(range(TRIALS)), final
    assert ids == [trial_job_id(sweep_id, n) for n in range(TRIALS)], ids
    assert listed == dict.fromkeys(ids, 1), listed  # no job of the sweep outside its trials
    many = {job_id: events for job_id, events in terminal_events.items() if len(events) != 1}
    assert not many, many
    checked.assert_clean()
    errors.assert_none()

    assert [run.info.run_id for run in parents] == [sweep["mlflow_run_id"]], parents
    assert parents[0].info.status == "FINISHED", parents[0].info
    assert child_runs == dict.fromkeys(ids, 1), child_runs
    runs = {run.data.tags["gradq.job_id"]: run.info.run_id for run in children}
    assert {t["id"]: t["mlflow_run_id"] for t in final} == runs

    # the sampler made again after the restart drew no point drawn before it (the learning
    # rate is continuous: two trials with the same point mean a point drawn twice)
    points = Counter(tuple(sorted(t["params"].items())) for t in final)
    assert max(points.values()) == 1, points

    succeeded = [t for t in final if t["status"] == "succeeded"]
    best = max(t["objective"] for t in succeeded)
    assert sweep["best"]["objective"] == best, (sweep["best"], final)
    assert sweep["best"]["job_id"] in {t["id"] for t in succeeded if t["objective"] == best}
    assert at_kill["running"] >= 1 and len(before) < TRIALS, before  # the kill was mid-sweep
