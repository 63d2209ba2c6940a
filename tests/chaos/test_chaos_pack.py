"""Fault 4: a pack's worker process is SIGKILLed while the pack trains, after one of its
members was pruned at an ASHA rung and another cancelled.

A sweep's 4 trials of one shape train as ONE pack (one Ray task, ``workers.pack``): every
member's job shows the same worker process (``progress.pid``) while it runs. Three of them
are the same training (the same learning rate and seed: they tie exactly at the rung), one
trains with a learning rate too small to learn anything. ASHA has a single rung, at epoch 1,
with a reduction factor larger than the sweep, so only the best value so far goes on: the
members report in pack order, which is trial-number order (``Dispatcher.units``); trial 0
is a good one (``search.seed`` places the bad point at trial 1 in Optuna's grid order,
checked below), so the bad member and only it is pruned. One good member is then cancelled
through the API. Each of those two ends while the rest of the pack trains on (their epochs
grow after the ends). Then the pack's worker is SIGKILLed mid-training, past a checkpoint
of every member left. (4 trials: the sweep controller queues its trials 4 at a time, and
a group it queues later may start as a pack of its own.)

The audit: the sweep succeeded; each member unfinished at the kill ran a second attempt that
resumed from its own checkpoint (at least the one MLflow held at the kill), trained its
epochs and no more (the checkpoint's history is its epoch's), and passes the suite's audit
(``chaos_harness.audit``: succeeded, one attempt at a time, one MLflow run, each
learning-curve step once); the pruned and the cancelled member ran once (attempt 1, one
claim), ended by exactly one terminal event, with one MLflow run whose curve holds each
epoch they trained exactly once.
"""

from __future__ import annotations

import os
import signal
import time
from collections import Counter
from typing import Any

import httpx
import pytest
from chaos_harness import (
    LOSS,
    TERMINAL,
    ServerErrors,
    audit,
    chaos_env,
    digits,
    record,
    serve,
    wait_until,
)
from deploy_stack import Stack, alive
from mlflow import MlflowClient

from workers.tracking import latest_checkpoint

pytestmark = pytest.mark.timeout(600)

TRIALS = 4
EPOCHS = 60  # long enough that the kill finds the pack training on a fast machine too
GOOD_LR = 0.005
BAD_LR = 1e-6  # learns nothing in an epoch: its rung value is far below the good ones'
GRID_SEED = 0  # Optuna's GridSampler with this seed hands the bad point (index 3) to trial 1
ENDED = (*TERMINAL, "pruned")


def sweep_spec() -> dict[str, Any]:
    base = digits("trial", EPOCHS)
    del base["name"]  # each trial is named after the sweep
    base["gradcheck"] = {"at_start": False, "every_steps": 0}
    return {
        "name": "chaos-pack",
        "base": base,
        # three points of one training (they tie exactly at the rung) and one bad point
        "space": {"optimizer.lr": {"grid": [GOOD_LR] * (TRIALS - 1) + [BAD_LR]}},
        "search": {"method": "grid", "trials": TRIALS, "parallel": TRIALS, "seed": GRID_SEED},
        "objective": {"metric": "val_accuracy", "mode": "max"},
        # one rung (epoch 1; the next would be 100 > EPOCHS); fewer reports than the factor:
        # only the best so far goes on
        "early_stopping": {"kind": "asha", "min_epochs": 1, "reduction_factor": 100},
    }


def trials(http: httpx.Client, sweep_id: str) -> list[dict[str, Any]]:
    r = http.get(f"/v1/sweeps/{sweep_id}/trials", params={"limit": 1000})
    assert r.status_code == 200 and r.json()["next_cursor"] is None, r.text
    return list(r.json()["items"])


def job(http: httpx.Client, job_id: str) -> dict[str, Any]:
    r = http.get(f"/v1/jobs/{job_id}")
    assert r.status_code == 200, r.text
    return dict(r.json())


def epoch(j: dict[str, Any]) -> int:
    return int((j.get("progress") or {}).get("epoch") or 0)


class Watch:
    """The members' jobs, read through the API; remembers the worker process each was seen
    running in during its first attempt (``progress.pid``)."""

    def __init__(self, http: httpx.Client, sweep_id: str) -> None:
        self.http, self.sweep_id = http, sweep_id
        self.ids: list[str] = []
        self.pids: dict[str, set[int]] = {}

    def read(self) -> dict[str, dict[str, Any]]:
        if len(self.ids) < TRIALS:
            self.ids = [t["id"] for t in trials(self.http, self.sweep_id)]
        now = {job_id: job(self.http, job_id) for job_id in self.ids}
        for job_id, j in now.items():
            pid = (j.get("progress") or {}).get("pid")
            if j["status"] == "running" and j["attempt"] == 1 and pid:
                self.pids.setdefault(job_id, set()).add(int(pid))
        return now


def test_pack_member_pruned_and_cancelled_then_worker_killed(stack: Stack) -> None:
    data = stack.folder / "data"
    env = chaos_env(data, RAY_TMPDIR=str(stack.ray_temp))
    data.mkdir()
    tracking = env["GRADQ_MLFLOW_TRACKING_URI"]
    errors = ServerErrors()

    with serve(stack, "serve", env, errors) as http:
        started = time.monotonic()
        r = http.post("/v1/sweeps", json=sweep_spec())
        assert r.status_code == 201, r.text
        sweep_id = r.json()["id"]
        watch = Watch(http, sweep_id)

        # 1. the pack trains; its bad member is pruned at the rung
        def pruned() -> dict[str, dict[str, Any]] | None:
            now = watch.read()
            return now if any(j["status"] == "pruned" for j in now.values()) else None

        at_prune = wait_until("a member pruned", pruned, 240, context=stack.logs)
        assert len(at_prune) == TRIALS, at_prune
        params = {
            job_id: j["spec"]["trial"]["params"]["optimizer.lr"] for job_id, j in at_prune.items()
        }
        number = {job_id: j["spec"]["trial"]["number"] for job_id, j in at_prune.items()}
        bad = [job_id for job_id, lr in params.items() if lr == BAD_LR]
        # the premise of a deterministic prune: Optuna's grid order put a good point first
        assert len(bad) == 1 and number[bad[0]] != 0, (params, number)
        [bad_id] = bad
        good = sorted((i for i in at_prune if i != bad_id), key=number.__getitem__)
        assert at_prune[bad_id]["status"] == "pruned", at_prune[bad_id]
        assert [i for i, j in at_prune.items() if j["status"] == "pruned"] == [bad_id]
        assert all(at_prune[i]["status"] == "running" for i in good), at_prune

        # 2. one good member is cancelled through the API while the pack trains
        cancel_id = good[-1]
        r = http.post(f"/v1/jobs/{cancel_id}/cancel")
        assert r.status_code == 202, r.text

        def cancelled() -> dict[str, dict[str, Any]] | None:
            now = watch.read()
            return now if now[cancel_id]["status"] == "cancelled" else None

        at_cancel = wait_until("the member cancelled", cancelled, 120, context=stack.logs)
        rest = [i for i in good if i != cancel_id]
        assert all(at_cancel[i]["status"] == "running" for i in rest), at_cancel

        # 3. the rest of the pack trains on after both ends, past a checkpoint of each: kill
        # its worker mid-training
        checkpoints: dict[str, int] = {}  # each one's checkpoint in MLflow before the kill

        def grown() -> bool:
            now = watch.read()
            if not all(now[i]["status"] == "running" for i in rest):
                return False
            if not all(epoch(now[i]) >= epoch(at_cancel[i]) + 2 for i in rest):
                return False
            for i in rest:
                ckpt = latest_checkpoint(tracking_uri=tracking, run_id=now[i]["mlflow_run_id"])
                if ckpt is None:
                    return False
                checkpoints[i] = ckpt.epoch
            return True

        wait_until("the pack to train on past a checkpoint", grown, 240, context=stack.logs)
        before = watch.read()  # just before the kill
        pid = int(before[rest[0]]["progress"]["pid"])
        os.kill(pid, signal.SIGKILL)
        killed_at = time.monotonic()
        wait_until("the pack's worker gone", lambda: not alive(pid), 60)
        unfinished = [i for i in rest if before[i]["status"] == "running"]
        kill_epochs = {i: epoch(before[i]) for i in unfinished}

        def sweep_ended() -> dict[str, Any] | None:
            r = http.get(f"/v1/sweeps/{sweep_id}")
            assert r.status_code == 200, r.text
            return r.json() if r.json()["status"] in TERMINAL else None

        sweep = wait_until("the sweep to end", sweep_ended, 480, context=stack.logs)
        done_s = time.monotonic() - killed_at
        final = {i: job(http, i) for i in watch.ids}
        events = {}
        for job_id in watch.ids:
            r = http.get(f"/v1/jobs/{job_id}/events")
            assert r.status_code == 200, r.text
            events[job_id] = r.json()
        checked = audit(http, tracking, dict.fromkeys(rest, EPOCHS))

    client = MlflowClient(tracking_uri=tracking)
    experiments = [e.experiment_id for e in client.search_experiments()]
    ended_runs = {}  # the pruned and the cancelled member: its runs, its curve's steps
    for job_id in (bad_id, cancel_id):
        runs = client.search_runs(experiments, f"tags.`gradq.job_id` = '{job_id}'")
        steps = Counter(
            p.step for p in client.get_metric_history(final[job_id]["mlflow_run_id"], LOSS)
        )
        ended_runs[job_id] = ([run.info.run_id for run in runs], steps)
    resumed = {i: final[i]["result"]["resumed_from_epoch"] for i in unfinished}
    record({
        "fault": "a pack's worker SIGKILLed mid-training, after a member pruned at a rung and "
                 "one cancelled (SQLite)",
        "in_flight": len(unfinished), "accepted": TRIALS, **checked.counts,
        "http_5xx": errors.count, "kill_epochs": sorted(kill_epochs.values()),
        "resumed_from": sorted(resumed.values()), "sweep_done_s": round(done_s, 1),
        "packs_after": sorted((final[i]["result"].get("pack") or {}).get("members", 1)
                              for i in unfinished),
        "total_s": round(time.monotonic() - started, 1),
        "checked": "one pack (one pid, result.pack.members); pruned and cancelled ended while "
                   "the pack trained on, ran once; the rest resumed from their checkpoints",
    })  # fmt: skip

    assert sweep["status"] == "succeeded", (sweep["error"], stack.logs())
    # one pack: every member seen running in one worker process, and the pruned member's
    # result says it trained in a pack of all of them
    for job_id in (bad_id, cancel_id):  # ended in attempt 1: their last progress is its
        watch.pids.setdefault(job_id, set()).add(int(final[job_id]["progress"]["pid"]))
    assert set(watch.pids) == set(watch.ids), watch.pids
    assert set().union(*watch.pids.values()) == {pid}, watch.pids
    assert final[bad_id]["result"]["engine"] == "packed", final[bad_id]["result"]
    assert final[bad_id]["result"]["pack"] == {"members": TRIALS}, final[bad_id]["result"]
    # the pruned and the cancelled member ended while the pack trained on
    for i in rest:
        assert epoch(before[i]) > epoch(at_prune[i]), (at_prune[i], before[i])
        assert epoch(before[i]) >= epoch(at_cancel[i]) + 2, (at_cancel[i], before[i])
    # the kill was mid-training: members were left unfinished, and each resumed from its own
    # checkpoint (at least the one MLflow held before the kill), in a second attempt
    assert unfinished == rest, before
    for i in unfinished:
        result = final[i]["result"]
        assert final[i]["status"] == "succeeded" and final[i]["attempt"] == 2, final[i]
        assert 1 <= checkpoints[i] <= resumed[i] < EPOCHS, (i, checkpoints, resumed)
        assert result["epochs"] == EPOCHS, result
    # the pruned member stopped at its rung with its result; the cancelled one where it was
    pruned_job, cancelled_job = final[bad_id], final[cancel_id]
    assert pruned_job["status"] == "pruned" and pruned_job["result"]["stopped"] == "pruned"
    assert epoch(pruned_job) == 1, pruned_job["progress"]
    assert cancelled_job["status"] == "cancelled", cancelled_job
    for job_id, (runs, steps) in ended_runs.items():
        # ran once: attempt 1, one claim, one MLflow run, each epoch it trained once
        assert final[job_id]["attempt"] == 1, final[job_id]
        claims = [e for e in events[job_id] if e["to_status"] == "running"]
        assert len(claims) == 1, events[job_id]
        assert runs == [final[job_id]["mlflow_run_id"]], runs
        assert sorted(steps) == list(range(1, epoch(final[job_id]) + 1)), steps
        assert max(steps.values()) == 1, steps
    # every member ended by exactly one terminal event
    many = {
        job_id: [e for e in evs if e["to_status"] in ENDED]
        for job_id, evs in events.items()
        if len([e for e in evs if e["to_status"] in ENDED]) != 1
    }
    assert not many, many
    checked.assert_clean()
    errors.assert_none()
