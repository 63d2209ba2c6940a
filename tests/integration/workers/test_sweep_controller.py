"""The sweep controller against the real queue and Optuna's storage (SQLite and PostgreSQL),
with no Ray: trials are ended by hand, as their attempts would end them. What a crash
between two of its writes leaves is adopted, never asked again; one controller holds a
sweep at a time."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import optuna
import pytest

from core.sweep import parse_sweep
from db.migrate import upgrade
from db.session import make_engine
from db.store import JobStore
from db.submits import SubmitRequest
from db.sweeps import SweepStore, trial_job_id
from workers.sweeps import SweepController, optuna_storage, study_name

SWEEP: dict[str, Any] = {
    "name": "c",
    "base": {"dataset": "iris", "optimizer": {"epochs": 2}},
    "space": {"optimizer.lr": {"loguniform": [0.01, 0.5]}, "seed": {"choice": [0, 1, 2]}},
    "search": {"method": "random", "trials": 6, "parallel": 2, "seed": 0},
    "objective": {"metric": "val_accuracy", "mode": "max"},
}


@pytest.fixture(params=["sqlite", "postgres"])
def db_url(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    url = (
        request.getfixturevalue("pg_url")
        if request.param == "postgres"
        else f"sqlite:///{tmp_path}/gradq.db"
    )
    upgrade(url)
    yield url


def controller(url: str, owner: str, **kw: Any) -> SweepController:
    engine = make_engine(url)
    return SweepController(
        SweepStore(engine), JobStore(engine), url, owner=owner, interval_seconds=0.0, **kw
    )


def create(c: SweepController, data: dict[str, Any] = SWEEP) -> str:
    sweep = parse_sweep(data)
    return c.sweeps.create(spec=sweep.spec.model_dump(mode="json"), name="c").id


def finish_running(c: SweepController, value: float = 0.9) -> list[str]:
    """End every queued trial job as its attempt would: claimed, then succeeded."""
    ended = []
    for job in c.jobs.claim(owner="w", limit=100, lease_seconds=60):
        c.jobs.finish(
            job_id=job.id,
            attempt=job.attempt,
            status="succeeded",
            result={"metrics": {"val_accuracy": value}},
        )
        ended.append(job.id)
    return ended


def test_a_sweep_runs_to_its_end_a_parallel_at_a_time(db_url: str) -> None:
    c = controller(db_url, "a")
    sweep_id = create(c)
    values = iter([0.5, 0.7, 0.6, 0.9, 0.8, 0.4])
    for _ in range(20):
        c.tick()
        queued = c.jobs.list(status="queued")[0]
        assert len(queued) <= 2  # parallel
        for job in c.jobs.claim(owner="w", limit=100, lease_seconds=60):
            c.jobs.finish(job_id=job.id, attempt=job.attempt, status="succeeded",
                          result={"metrics": {"val_accuracy": next(values)}})  # fmt: skip
        if c.sweeps.get(sweep_id=sweep_id).status == "succeeded":
            break
    view = c.sweeps.get(sweep_id=sweep_id)
    assert view.status == "succeeded" and view.best is not None
    assert view.best["objective"] == 0.9
    trials = c.sweeps.trials(sweep_id=sweep_id)[0]
    assert [t.number for t in trials] == list(range(6))
    assert sorted(t.ended_seq or 0 for t in trials) == list(range(1, 7))
    study = optuna.load_study(study_name=study_name(sweep_id), storage=optuna_storage(db_url))
    assert len(study.trials) == 6 and study.best_value == 0.9


def test_a_trial_asked_but_not_recorded_is_adopted_never_asked_again(db_url: str) -> None:
    """The controller stopped between Optuna's ask and the trial's job: the next one submits
    that trial from the point the study stored, and the sweep still makes 6 trials."""
    c = controller(db_url, "a")
    sweep_id = create(c)
    c.tick()  # trials 0 and 1 queued
    study = optuna.load_study(study_name=study_name(sweep_id), storage=optuna_storage(db_url))
    orphan = study.ask(c._distributions(c._held[sweep_id].sweep))  # and then it died
    c.sweeps.release(sweep_id=sweep_id, owner="a")
    b = controller(db_url, "b")
    b.tick()
    trials = {t.number: t for t in b.sweeps.trials(sweep_id=sweep_id)[0]}
    assert set(trials) == {0, 1, 2}
    assert trials[2].params["optimizer.lr"] == orphan.params["optimizer.lr"]
    assert trials[2].job_id == trial_job_id(sweep_id, 2)
    for _ in range(20):
        finish_running(b)
        b.tick()
        if b.sweeps.get(sweep_id=sweep_id).status != "running":
            break
    assert b.sweeps.get(sweep_id=sweep_id).status == "succeeded"
    numbers = [t.number for t in b.sweeps.trials(sweep_id=sweep_id)[0]]
    assert numbers == list(range(6))
    assert len(optuna.load_study(study_name=study_name(sweep_id),
                                 storage=optuna_storage(db_url)).trials) == 6  # fmt: skip


def test_a_trial_whose_job_was_queued_but_not_linked_makes_no_second_job(db_url: str) -> None:
    """The controller stopped between a trial's job and its ``trials`` row: adopting it finds
    the job (its id derives from the sweep and the number), and no second one is made."""
    c = controller(db_url, "a")
    sweep_id = create(c)
    c.tick()
    held = c._held[sweep_id]
    trial = held.study.ask(c._distributions(held.sweep))
    spec_job = trial_job_id(sweep_id, trial.number)
    from core.sweep import trial_spec

    params = c._values(held.sweep, trial.params)
    spec = trial_spec(held.sweep, sweep_id=sweep_id, number=trial.number, params=params,
                      parent_run_id=None)  # fmt: skip
    c.jobs.submit_many([SubmitRequest(spec, job_id=spec_job, may_exist=True)])  # then it died
    c.sweeps.release(sweep_id=sweep_id, owner="a")
    before = len(c.jobs.list(limit=100)[0])
    b = controller(db_url, "b")  # the controller that takes the sweep over
    b.tick()
    assert len(b.jobs.list(limit=100)[0]) == before  # adopted: the same job
    linked = {t.number: t.job_id for t in b.sweeps.trials(sweep_id=sweep_id)[0]}
    assert linked[trial.number] == spec_job


def test_one_controller_holds_a_sweep_until_its_lease_runs_out(db_url: str) -> None:
    a = controller(db_url, "a", lease_seconds=60)
    b = controller(db_url, "b", lease_seconds=60)
    sweep_id = create(a)
    a.tick()
    b.tick()
    assert sweep_id in a._held and sweep_id not in b._held
    assert a.sweeps.get(sweep_id=sweep_id).lease_owner == "a"
    # a's lease runs out (a stopped): b takes the sweep at its next claim
    assert a.sweeps.claim(owner="a", lease_seconds=-1) == [sweep_id]
    b._last_claim = float("-inf")
    b.tick()
    assert sweep_id in b._held and b.sweeps.get(sweep_id=sweep_id).lease_owner == "b"
    # a, back, is fenced out of every write
    from db.sweeps import SweepLeaseLost

    with pytest.raises(SweepLeaseLost):
        a.sweeps.update(sweep_id=sweep_id, owner="a", notes=[])
    a.tick()  # notices, and lets go
    assert sweep_id not in a._held


def test_a_sampled_point_that_makes_no_valid_spec_is_noted_and_counted_failed(
    db_url: str,
) -> None:
    """Each bound valid with the base (lr 0.3, min_lr 0), every sampled point invalid
    (min_lr above lr): each point is noted on the sweep and told failed to Optuna, and the
    sweep fails, none having succeeded."""
    bad = {
        **SWEEP,
        "base": {"dataset": "iris", "optimizer": {"epochs": 2, "lr": 0.3}},
        "space": {
            "optimizer.lr": {"uniform": [0.1, 0.11]},
            "optimizer.schedule.min_lr": {"uniform": [0.2, 0.28]},
        },
        "search": {"method": "random", "trials": 2, "parallel": 2},
    }
    c = controller(db_url, "a")
    sweep_id = create(c, bad)
    c.tick()
    c.tick()
    view = c.sweeps.get(sweep_id=sweep_id)
    assert view.status == "failed"
    assert [n["trial"] for n in view.notes] == [0, 1]
    assert "schedule.min_lr" in view.notes[0]["message"]
    assert view.error is not None and "no trial succeeded (2 failed)" in view.error
    assert c.sweeps.trials(sweep_id=sweep_id)[0] == []  # no job was made


def test_a_grid_sweep_ends_though_optunas_grid_sampler_asks_the_study_to_stop(
    db_url: str,
) -> None:
    """Once every point was handed out, Optuna's grid sampler stops the study at each tell
    (an error outside ``Study.optimize``): the tells are recorded and the sweep ends."""
    data = {
        **SWEEP,
        "space": {"optimizer.lr": {"grid": [0.01, 0.1]}, "seed": {"grid": [0, 1]}},
        "search": {"method": "grid", "trials": 4, "parallel": 4},
    }
    c = controller(db_url, "a")
    sweep_id = create(c, data)
    c.tick()  # every point queued
    finish_running(c)
    c.tick()
    c.tick()
    view = c.sweeps.get(sweep_id=sweep_id)
    assert view.status == "succeeded"
    study = optuna.load_study(study_name=study_name(sweep_id), storage=optuna_storage(db_url))
    assert [t.state.name for t in study.trials] == ["COMPLETE"] * 4


def test_trials_the_tenants_quota_refused_are_queued_later_none_lost(db_url: str) -> None:
    """With room for one queued job a tenant, a step queues one trial; the points Optuna
    handed out for the others are queued at later steps, and the sweep makes its 6."""
    c = controller(db_url, "a", max_queued=1)
    sweep_id = create(c)
    for _ in range(30):
        c.tick()
        assert len(c.jobs.list(status="queued")[0]) <= 1
        finish_running(c)
        if c.sweeps.get(sweep_id=sweep_id).status != "running":
            break
    assert c.sweeps.get(sweep_id=sweep_id).status == "succeeded"
    assert [t.number for t in c.sweeps.trials(sweep_id=sweep_id)[0]] == list(range(6))
    study = optuna.load_study(study_name=study_name(sweep_id), storage=optuna_storage(db_url))
    assert len(study.trials) == 6


def test_a_new_sweep_is_taken_at_the_next_step_not_at_the_next_renewal(db_url: str) -> None:
    c = controller(db_url, "a", lease_seconds=600)  # leases renewed every 200 s
    first = create(c)
    c.tick()
    assert set(c._held) == {first}
    second = create(c)
    c.tick()
    assert set(c._held) == {first, second}
    assert c.sweeps.get(sweep_id=second).status == "running"
    assert len(c.sweeps.trials(sweep_id=second)[0]) == 2  # its first trials queued already


def test_a_trial_logs_its_model_only_when_it_beats_the_best_so_far(db_url: str) -> None:
    from types import SimpleNamespace

    from workers.task import _logs_model

    c = controller(db_url, "a")
    sweep_id = create(c)
    c.tick()
    sweep = parse_sweep(SWEEP)
    from core.sweep import trial_spec

    spec = trial_spec(sweep, sweep_id=sweep_id, number=0, params={"optimizer.lr": 0.1},
                      parent_run_id=None)  # fmt: skip
    engine = make_engine(db_url)

    def logs(value: float, s: Any = spec) -> bool:
        return _logs_model(engine, s, SimpleNamespace(metrics={"val_accuracy": value}))

    assert logs(0.5)  # no best yet
    best = {"job_id": "j", "trial": 1, "params": {}, "objective": 0.9}
    c.sweeps.update(sweep_id=sweep_id, owner="a", best=best)
    assert not logs(0.8) and not logs(0.9) and logs(0.95)
    # in a pack, the best of its members that ended before with a model logged counts too
    packed = _logs_model(engine, spec, SimpleNamespace(metrics={"val_accuracy": 0.95}), 0.96)
    assert not packed
    assert _logs_model(engine, spec, SimpleNamespace(metrics={"val_accuracy": 0.97}), 0.96)
    # and both must be beaten: the pack's below the sweep's best
    assert not _logs_model(engine, spec, SimpleNamespace(metrics={"val_accuracy": 0.85}), 0.8)
    assert not logs(float("nan"))
    every = spec.model_copy(update={"trial": spec.trial.model_copy(update={"log_models": "all"})})
    assert logs(0.5, every)
