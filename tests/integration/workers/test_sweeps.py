"""Sweeps end to end: the real queue (SQLite and PostgreSQL), a local Ray, an MLflow store,
Optuna's storage beside the queue; a dispatcher thread whose sweep controller makes the
trials."""

from __future__ import annotations

import math
import os
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from mlflow import MlflowClient

from core.sweep import grid_points, parse_sweep, promotable
from db.migrate import upgrade
from db.session import make_engine
from db.states import TERMINAL
from db.store import JobStore
from db.sweeps import SweepStore, SweepView, TrialView
from workers.dispatcher import Dispatcher, DispatcherConfig
from workers.sweeps import SweepController
from workers.task import WorkerConfig
from workers.tracking import latest_checkpoint, metric_history
from workers.tracking.sweep import SweepRuns

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def ray_local() -> Iterator[None]:
    import ray

    os.environ.setdefault("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    yield
    ray.shutdown()


@dataclass
class Service:
    jobs: JobStore
    sweeps: SweepStore
    tracking_uri: str
    dispatcher: Dispatcher

    def submit(self, data: dict[str, Any], tenant: str = "default") -> str:
        sweep = parse_sweep(data)
        view = self.sweeps.create(
            spec=sweep.spec.model_dump(mode="json"), name=sweep.spec.name, tenant=tenant
        )
        return view.id

    def wait(self, sweep_id: str, timeout: float = 240) -> SweepView:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            view = self.sweeps.get(sweep_id=sweep_id)
            if view.status in ("succeeded", "failed", "cancelled"):
                return view
            time.sleep(0.2)
        trials = self.trials(sweep_id)
        raise AssertionError(f"timed out: {self.sweeps.get(sweep_id=sweep_id)} {trials}")

    def trials(self, sweep_id: str) -> list[TrialView]:
        return self.sweeps.trials(sweep_id=sweep_id)[0]


@pytest.fixture
def service(ray_local: None, tmp_path: Path, request: pytest.FixtureRequest) -> Iterator[Service]:
    backend = getattr(request, "param", "sqlite")
    db_url = (
        request.getfixturevalue("pg_url")
        if backend == "postgres"
        else f"sqlite:///{tmp_path}/gradq.db"
    )
    upgrade(db_url)
    engine = make_engine(db_url)
    jobs, sweeps = JobStore(engine), SweepStore(engine)
    tracking = f"sqlite:///{tmp_path}/mlflow.db"
    config = WorkerConfig(
        database_url=db_url, tracking_uri=tracking, artifact_root=str(tmp_path / "artifacts"),
        lease_seconds=10.0, heartbeat_seconds=0.5, checkpoint_upload_seconds=0.0,
    )  # fmt: skip
    dispatcher = Dispatcher(DispatcherConfig(worker=config, poll_seconds=0.1), jobs)
    dispatcher.sweeps = SweepController(
        sweeps,
        jobs,
        db_url,
        tracking=SweepRuns(tracking, artifact_root=str(tmp_path / "artifacts")),
        interval_seconds=0.05,
    )
    dispatcher.connect()
    stop = threading.Event()
    thread = threading.Thread(target=dispatcher.run, args=(stop,), daemon=True)
    thread.start()
    yield Service(jobs, sweeps, tracking, dispatcher)
    stop.set()
    thread.join(timeout=30)
    import ray

    for attempt in dispatcher.inflight.values():
        ray.cancel(attempt.ref, force=True)
    engine.dispose()


def iris_sweep(**over: Any) -> dict[str, Any]:
    out: dict[str, Any] = {
        "name": "iris-sweep",
        "base": {
            "dataset": "iris",
            "optimizer": {"epochs": 3, "batch_size": 16},
            "regularization": {"early_stopping": {"enabled": False}},
            "gradcheck": {"at_start": False, "every_steps": 0},
        },
        "space": {
            "optimizer.lr": {"loguniform": [0.01, 0.5]},
            "model.hidden": {"choice": [[8], [16, 16]]},
            "seed": {"choice": [0, 1, 2]},
        },
        "search": {"method": "random", "trials": 12, "parallel": 4, "seed": 3},
        "objective": {"metric": "val_accuracy", "mode": "max"},
    }
    out.update(over)
    return out


def check_completed(svc: Service, sweep_id: str, n: int) -> list[TrialView]:
    """The sweep succeeded with ``n`` trials, each one job ended once, and its best is the
    best succeeded trial's."""
    view = svc.sweeps.get(sweep_id=sweep_id)
    assert view.status == "succeeded", view
    trials = svc.trials(sweep_id)
    assert [t.number for t in trials] == list(range(n))
    assert len({t.job_id for t in trials}) == n
    for t in trials:
        assert t.status in TERMINAL and t.told
        job = svc.jobs.get(job_id=t.job_id)
        assert job.spec["trial"]["sweep_id"] == sweep_id
        assert job.spec["trial"]["params"] == t.params
        ends = [e for e in svc.jobs.events(job_id=t.job_id) if e.to_status in TERMINAL]
        assert len(ends) == 1, ends  # ended once
    done = [t for t in trials if t.status.value == "succeeded"]
    top = max(t.objective or -1 for t in done)
    # the best: of the trials with the top objective, the first that ended (ties are common:
    # iris validates on 30 rows)
    best = min((t for t in done if t.objective == top), key=lambda t: t.ended_seq or 0)
    assert view.best is not None
    assert view.best["job_id"] == best.job_id and view.best["objective"] == best.objective
    assert view.best["params"] == best.params
    # the trials were compared on the same split, whatever their seeds
    seeds = {svc.jobs.get(job_id=t.job_id).spec["dataset"]["seed"] for t in trials}
    assert seeds == {0}
    return trials


def check_mlflow(svc: Service, view: SweepView, trials: list[TrialView]) -> None:
    """The sweep's parent run with one child run per trial, and the results table."""
    client = MlflowClient(svc.tracking_uri)
    assert view.mlflow_run_id is not None
    parent = client.get_run(view.mlflow_run_id)
    assert parent.info.status == "FINISHED"
    experiment = parent.info.experiment_id
    children = client.search_runs(
        [experiment], f"tags.`mlflow.parentRunId` = '{view.mlflow_run_id}'", max_results=1000
    )
    by_job = {}
    for run in children:
        by_job.setdefault(run.data.tags["gradq.job_id"], []).append(run.info.run_id)
    assert by_job == {t.job_id: [t.mlflow_run_id] for t in trials}  # exactly one run each
    text = client.download_artifacts(view.mlflow_run_id, "results.csv")
    rows = Path(text).read_text().strip().splitlines()
    assert len(rows) == len(trials) + 1 and rows[0].startswith("trial,job_id,status")
    assert parent.data.tags["best.job_id"] == view.best["job_id"]  # type: ignore[index]
    best_curve = metric_history(
        tracking_uri=svc.tracking_uri, run_id=view.mlflow_run_id, key="best_objective"
    )
    assert best_curve[-1][1] == view.best["objective"]  # type: ignore[index]
    assert [v for _, v in best_curve] == sorted(v for _, v in best_curve)  # only improves


@pytest.mark.parametrize("service", ["sqlite", "postgres"], indirect=True)
def test_a_random_sweep_completes_with_its_best_trial(service: Service) -> None:
    sweep_id = service.submit(iris_sweep(register_as="iris-best"))
    view = service.wait(sweep_id)
    trials = check_completed(service, sweep_id, 12)
    check_mlflow(service, view, trials)
    # the best trial's model, registered by the sweep
    client = MlflowClient(service.tracking_uri)
    [version] = client.search_model_versions("name = 'iris-best'")
    assert version.tags["gradq.job_id"] == view.best["job_id"]  # type: ignore[index]
    # log_models: best (the default): a trial that did not beat the best so far kept no model
    models = {
        t.job_id: "gradq.model_uri" in client.get_run(t.mlflow_run_id or "").data.tags
        for t in trials
        if t.status.value == "succeeded"
    }
    assert models[view.best["job_id"]]  # type: ignore[index]
    assert not all(models.values()), models
    values = {t.params["optimizer.lr"] for t in trials}
    assert len(values) == 12 and all(0.01 <= v <= 0.5 for v in values)


@pytest.mark.parametrize("service", ["sqlite", "postgres"], indirect=True)
def test_a_tpe_sweep_completes(service: Service) -> None:
    sweep_id = service.submit(
        iris_sweep(search={"method": "tpe", "trials": 8, "parallel": 2, "seed": 0})
    )
    service.wait(sweep_id)
    check_completed(service, sweep_id, 8)


def test_a_grid_sweep_runs_each_point_once(service: Service) -> None:
    data = iris_sweep(
        space={"optimizer.lr": {"grid": [0.05, 0.2]}, "model.hidden": {"grid": [[4], [8], [16]]}},
        search={"method": "grid", "trials": 6, "parallel": 3},
    )
    sweep_id = service.submit(data)
    service.wait(sweep_id)
    trials = check_completed(service, sweep_id, 6)
    seen = sorted((t.params["optimizer.lr"], tuple(t.params["model.hidden"])) for t in trials)
    points = grid_points(parse_sweep(data))
    assert seen == sorted((p["optimizer.lr"], tuple(p["model.hidden"])) for p in points)


def test_asha_prunes_the_diverging_region_early_and_keeps_pruned_curves(
    service: Service,
) -> None:
    """digits with lr 1.5 or 2.5 diverges after a few epochs, its first epoch already poor;
    rungs at epochs 1, 2 and 4 of 6 stop such trials before they diverge."""
    data = {
        "name": "asha",
        "base": {
            "dataset": "digits", "model": {"hidden": [32]},
            "optimizer": {"epochs": 6, "batch_size": 32},
            "regularization": {"early_stopping": {"enabled": False}},
            "gradcheck": {"at_start": False, "every_steps": 0},
        },
        "space": {"optimizer.lr": {"grid": [0.03, 0.05, 0.1, 1.5, 2.5]}, "seed": {"grid": [0, 1]}},
        "search": {"method": "grid", "trials": 10, "parallel": 2, "seed": 0},
        "objective": {"metric": "val_accuracy"},
        "early_stopping": {"kind": "asha", "min_epochs": 1, "reduction_factor": 2},
    }  # fmt: skip
    sweep_id = service.submit(data)
    view = service.wait(sweep_id)
    assert view.status == "succeeded", view
    trials = service.trials(sweep_id)
    bad = [t for t in trials if t.params["optimizer.lr"] > 1]
    assert not [t for t in bad if t.status.value == "succeeded"]
    pruned = [t for t in trials if t.status.value == "pruned"]
    assert [t for t in bad if t.status.value == "pruned"], [(t.params, t.status) for t in bad]
    epochs = {t.job_id: svc_epochs(service, t) for t in trials}
    for t in pruned:  # stopped at a rung, with its curve and its checkpoint
        job = service.jobs.get(job_id=t.job_id)
        assert job.result is not None and job.result["stopped"] == "pruned"
        assert epochs[t.job_id] in (1, 2, 4)
        assert t.mlflow_run_id is not None
        curve = metric_history(
            tracking_uri=service.tracking_uri, run_id=t.mlflow_run_id, key="loss/train"
        )
        assert [step for step, _ in curve] == list(range(1, epochs[t.job_id] + 1))
        checkpoint = latest_checkpoint(tracking_uri=service.tracking_uri, run_id=t.mlflow_run_id)
        assert checkpoint is not None and checkpoint.epoch == epochs[t.job_id]
        assert (
            MlflowClient(service.tracking_uri).get_run(t.mlflow_run_id).data.tags["gradq.outcome"]
            == "pruned"
        )
    # every decision follows from the reports stored before it
    reports = service.sweeps.reports(sweep_id=sweep_id)
    assert reports
    for i, r in enumerate(reports):
        before = [
            math.nan if o["value"] is None else o["value"]
            for o in reports[: i + 1]
            if o["rung"] == r["rung"]
        ]
        value = math.nan if r["value"] is None else r["value"]
        assert r["promoted"] == promotable(value, before, 2, "max"), (i, r)
    # a pruned trial's last report is the one that stopped it
    for t in pruned:
        last = [r for r in reports if r["job_id"] == t.job_id][-1]
        assert not last["promoted"] and last["rung"] == epochs[t.job_id]


def svc_epochs(svc: Service, t: TrialView) -> int:
    job = svc.jobs.get(job_id=t.job_id)
    return int((job.progress or {}).get("epoch", 0))


def test_a_sweep_whose_every_trial_diverges_fails_saying_why(service: Service) -> None:
    data = {
        "name": "all-diverge",
        "base": {"dataset": "diabetes", "optimizer": {"epochs": 4},
                 "regularization": {"early_stopping": {"enabled": False}}},
        "space": {"optimizer.lr": {"uniform": [50.0, 100.0]}},
        "search": {"method": "random", "trials": 3, "parallel": 3},
        "objective": {"metric": "val_loss"},
    }  # fmt: skip
    view = service.wait(service.submit(data))
    assert view.status == "failed"
    assert view.error is not None and "no trial succeeded (3 failed)" in view.error
    assert "diverged" in view.error
    assert view.best is None


def test_cancel_stops_queued_and_running_trials_and_keeps_results(service: Service) -> None:
    data = iris_sweep(
        base={
            "dataset": "digits", "model": {"hidden": [256, 256]},
            "optimizer": {"epochs": 300, "batch_size": 8},
            "regularization": {"early_stopping": {"enabled": False}},
        },
        search={"method": "random", "trials": 6, "parallel": 4},
        space={"optimizer.lr": {"loguniform": [0.001, 0.01]}},
    )  # fmt: skip
    sweep_id = service.submit(data)
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        trials = service.trials(sweep_id)
        if sum(t.status.value == "running" for t in trials) >= 1 and len(trials) == 4:
            break
        time.sleep(0.2)
    service.sweeps.request_cancel(sweep_id=sweep_id)
    view = service.wait(sweep_id, timeout=120)
    assert view.status == "cancelled"
    trials = service.trials(sweep_id)
    assert len(trials) == 4  # no trial made after the cancel
    assert {t.status.value for t in trials} == {"cancelled"}
    assert service.sweeps.get(sweep_id=sweep_id).spec["name"] == "iris-sweep"  # results kept
    assert all(t.told for t in trials)


@pytest.mark.parametrize("pack", [True, False])
def test_a_sweeps_trials_of_one_shape_train_in_packs_unless_it_says_not(
    service: Service, pack: bool
) -> None:
    """8 trials of one shape, 8 at a time: the dispatcher starts them as packs (one Ray task
    each, ``workers.pack``), each trial still a job with its own run; ``search.pack: false``
    trains each alone."""
    data = iris_sweep(
        space={"optimizer.lr": {"loguniform": [0.01, 0.5]}, "seed": {"choice": [0, 1, 2]}},
        search={"method": "random", "trials": 8, "parallel": 8, "seed": 1, "pack": pack},
    )
    view = service.wait(service.submit(data))
    trials = check_completed(service, view.id, 8)
    check_mlflow(service, view, trials)
    results = [service.jobs.get(job_id=t.job_id).result or {} for t in trials]
    engines = {r["engine"] for r in results}
    packs = [r.get("pack", {}).get("members", 1) for r in results]
    if pack:
        assert engines == {"packed"} and min(packs) > 1, packs
    else:
        assert engines == {"manual"} and set(packs) == {1}
