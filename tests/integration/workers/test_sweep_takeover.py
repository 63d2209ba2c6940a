"""A sweep controller's steps one at a time, a controller that dies mid-step and the one that
takes its sweep over: the real queue and sweep store (SQLite) and Optuna's storage beside
it; the trials' jobs are claimed and ended by the test, as an attempt would."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import Engine

from core.sweep import parse_sweep
from db.migrate import upgrade
from db.session import make_engine
from db.store import JobStore
from db.sweeps import ACTIVE, SweepStore
from workers.sweeps import SweepController


class Killed(Exception):
    """The controller's process died here."""


def iris_sweep(tmp_path: Path, trials: int, parallel: int) -> tuple[str, Engine, str]:
    """A random sweep of ``trials`` iris trials, ``parallel`` at once, stored: (database
    URL, engine, sweep id)."""
    db_url = f"sqlite:///{tmp_path}/gradq.db"
    upgrade(db_url)
    engine = make_engine(db_url)
    sweep = parse_sweep({
        "name": "steps",
        "base": {"dataset": "iris", "optimizer": {"epochs": 2}},
        "space": {"optimizer.lr": {"loguniform": [0.01, 0.5]}},
        "search": {"method": "random", "trials": trials, "parallel": parallel},
        "objective": {"metric": "val_accuracy", "mode": "max"},
    })  # fmt: skip
    view = SweepStore(engine).create(spec=sweep.spec.model_dump(mode="json"), name="steps")
    return db_url, engine, view.id


def test_the_step_that_makes_the_last_trials_does_not_end_the_sweep(tmp_path: Path) -> None:
    """Every trial fits in ``parallel``: the first step makes them all, and the sweep runs
    until they ended."""
    db_url, engine, sweep_id = iris_sweep(tmp_path, trials=2, parallel=2)
    jobs, sweeps = JobStore(engine), SweepStore(engine)
    controller = SweepController(sweeps, jobs, db_url, owner="one")
    controller.tick(now=True)
    view = sweeps.get(sweep_id=sweep_id)
    assert view.status == "running", (view.status, view.error)
    trials, _ = sweeps.trials(sweep_id=sweep_id)
    assert [(t.number, t.status.value) for t in trials] == [(0, "queued"), (1, "queued")]
    engine.dispose()


def test_a_controller_killed_right_after_telling_a_trial_leaves_its_best(tmp_path: Path) -> None:
    """Killed just after a trial's end was recorded (``told``), the controller never comes
    back to that trial: the trial is the sweep's best only if that record said so."""
    db_url, engine, sweep_id = iris_sweep(tmp_path, trials=2, parallel=2)
    jobs = JobStore(engine)
    dying = SweepStore(engine)
    told = dying.tell

    def tell_then_die(**kwargs: Any) -> int:
        seq = told(**kwargs)
        if kwargs["number"] == 1:
            raise Killed
        return seq

    dying.tell = tell_then_die  # type: ignore[method-assign]
    first = SweepController(dying, jobs, db_url, owner="first", lease_seconds=0.5)
    first.tick(now=True)  # takes the sweep and queues its 2 trials
    claimed = jobs.claim(owner="attempts", limit=2, lease_seconds=60)
    assert len(claimed) == 2
    trials, _ = dying.trials(sweep_id=sweep_id)
    objective = {trials[0].job_id: 0.5, trials[1].job_id: 0.9}  # trial 1 is the best
    for job in claimed:
        result = {"metrics": {"val_accuracy": objective[job.id]}}
        jobs.finish(job_id=job.id, attempt=job.attempt, status="succeeded", result=result)
    with pytest.raises(Killed):
        first.tick(now=True)  # tells trial 0, then trial 1, and dies

    second = SweepController(SweepStore(engine), jobs, db_url, owner="second")
    deadline = time.monotonic() + 60  # the first's lease runs out, the second ends the sweep
    while SweepStore(engine).get(sweep_id=sweep_id).status in ACTIVE:
        assert time.monotonic() < deadline, SweepStore(engine).get(sweep_id=sweep_id)
        second.tick(now=True)
        time.sleep(0.1)
    view = SweepStore(engine).get(sweep_id=sweep_id)
    assert view.status == "succeeded", view
    assert view.best is not None and view.best["trial"] == 1, view.best
    assert view.best["objective"] == 0.9
    engine.dispose()


def test_a_trial_that_ends_while_another_is_told_is_told_before_the_sweep_ends(
    tmp_path: Path,
) -> None:
    """The last trial ends while the controller tells the one before it: the sweep ends only
    once that trial was told too, its objective recorded and counted for the best."""
    db_url, engine, sweep_id = iris_sweep(tmp_path, trials=2, parallel=2)
    jobs, sweeps = JobStore(engine), SweepStore(engine)
    controller = SweepController(sweeps, jobs, db_url, owner="one")
    controller.tick(now=True)  # takes the sweep and queues its 2 trials
    claimed = {job.id: job for job in jobs.claim(owner="attempts", limit=2, lease_seconds=60)}
    trials, _ = sweeps.trials(sweep_id=sweep_id)
    first, last = trials[0].job_id, trials[1].job_id

    def end(job_id: str, value: float) -> None:
        jobs.finish(job_id=job_id, attempt=claimed[job_id].attempt, status="succeeded",
                    result={"metrics": {"val_accuracy": value}})  # fmt: skip

    told = sweeps.tell

    def tell_while_the_last_ends(**kwargs: Any) -> int:
        if kwargs["number"] == 0:
            end(last, 0.9)
        return told(**kwargs)

    sweeps.tell = tell_while_the_last_ends  # type: ignore[method-assign]
    end(first, 0.5)
    deadline = time.monotonic() + 60
    while sweeps.get(sweep_id=sweep_id).status in ACTIVE:
        assert time.monotonic() < deadline, sweeps.get(sweep_id=sweep_id)
        controller.tick(now=True)
    view = sweeps.get(sweep_id=sweep_id)
    trials, _ = sweeps.trials(sweep_id=sweep_id)
    assert [(t.number, t.told, t.objective) for t in trials] == [(0, True, 0.5), (1, True, 0.9)]
    assert view.status == "succeeded", view
    assert view.best is not None and view.best["trial"] == 1, view.best
    engine.dispose()
