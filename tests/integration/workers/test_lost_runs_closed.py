"""The dispatcher closes the MLflow run of a job whose worker was lost, without waiting on
MLflow: the real JobStore (SQLite), the real MLflow SQLite store, ``close_run`` itself (held
back once by a gate, as a hanging MLflow server would hold it). No Ray: ``settle_expired``
needs none; nor does a dispatcher's start, which closes what a stopped one left open."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from mlflow import MlflowClient

from core.spec import parse_spec
from db.migrate import upgrade
from db.session import make_engine
from db.store import JobStore
from workers.dispatcher import Dispatcher, DispatcherConfig
from workers.task import WorkerConfig
from workers.tracking import close_run


def an_hour_ago() -> datetime:
    return datetime.now(UTC) - timedelta(hours=1)


@pytest.fixture
def dispatcher(tmp_path: Path) -> Iterator[Dispatcher]:
    url = f"sqlite:///{tmp_path}/gradq.db"
    upgrade(url)
    engine = make_engine(url)
    worker = WorkerConfig(
        database_url=url, tracking_uri=f"sqlite:///{tmp_path}/mlflow.db",
        artifact_root=str(tmp_path / "artifacts"),
    )  # fmt: skip
    d = Dispatcher(DispatcherConfig(worker=worker), JobStore(engine))
    yield d
    d.closer.stop()
    engine.dispose()


def lost_job(d: Dispatcher, name: str) -> tuple[str, str]:
    """A job on its last attempt whose worker is gone (lease run out), with a RUNNING run."""
    client = MlflowClient(tracking_uri=d.config.worker.tracking_uri)
    experiment = client.get_experiment_by_name("lost") or client.get_experiment(
        client.create_experiment("lost")
    )
    run_id = client.create_run(experiment.experiment_id, run_name=name).info.run_id
    job = d.store.submit(spec=parse_spec({"name": name, "dataset": "iris", "max_attempts": 1}))
    [claimed] = d.store.claim(owner="gone", lease_seconds=0.05, ids=[job.id])
    d.store.set_run(job_id=job.id, attempt=claimed.attempt, mlflow_run_id=run_id)
    time.sleep(0.1)
    return job.id, run_id


def test_a_lost_jobs_run_is_closed_failed_with_the_reason(dispatcher: Dispatcher) -> None:
    job_id, run_id = lost_job(dispatcher, "lost-once")
    dispatcher.settle_expired()
    assert dispatcher.store.get(job_id=job_id).status.value == "failed"
    assert dispatcher.closer.wait_idle(30)
    run = MlflowClient(tracking_uri=dispatcher.config.worker.tracking_uri).get_run(run_id)
    assert run.info.status == "FAILED"
    assert run.data.tags["gradq.close_reason"] == "the worker running it was lost"
    assert (dispatcher.closer.closed, dispatcher.closer.failures) == (1, 0)


def test_settling_does_not_wait_for_a_hanging_mlflow(dispatcher: Dispatcher) -> None:
    gate, entered = threading.Event(), threading.Event()

    def hanging_then_real(**kwargs: Any) -> None:
        entered.set()
        assert gate.wait(30)
        close_run(**kwargs)

    dispatcher.closer.close = hanging_then_real
    first, first_run = lost_job(dispatcher, "lost-first")
    dispatcher.settle_expired()
    assert entered.wait(10)  # the close of the first run hangs ...
    second, second_run = lost_job(dispatcher, "lost-second")
    dispatcher.settle_expired()  # ... and the loop goes on: the second job is settled too
    assert dispatcher.store.get(job_id=second).status.value == "failed"
    client = MlflowClient(tracking_uri=dispatcher.config.worker.tracking_uri)
    assert client.get_run(first_run).info.status == "RUNNING"
    assert dispatcher.closer.pending == 2
    gate.set()
    assert dispatcher.closer.wait_idle(30)
    assert [client.get_run(r).info.status for r in (first_run, second_run)] == ["FAILED"] * 2
    assert dispatcher.store.get(job_id=first).status.value == "failed"


def test_a_new_dispatcher_closes_the_runs_a_stopped_one_left_open(
    dispatcher: Dispatcher, tmp_path: Path
) -> None:
    """The first dispatcher settled the jobs (failed "lost", and cancelled), then stopped
    before it could close their runs (MLflow away, or a crash). The next one closes them at
    its start; runs already closed, and runs of jobs that ended otherwise, stay as they are."""
    client = MlflowClient(tracking_uri=dispatcher.config.worker.tracking_uri)
    lost, lost_run = lost_job(dispatcher, "lost-unclosed")
    cancelled, cancelled_run = lost_job(dispatcher, "cancelled-unclosed")
    dispatcher.store.request_cancel(job_id=cancelled)
    closed, closed_run = lost_job(dispatcher, "lost-closed-already")
    settled = dict(dispatcher.store.requeue_expired())  # as the stopped dispatcher did
    assert settled == {lost: "failed", cancelled: "cancelled", closed: "failed"}
    close_run(tracking_uri=dispatcher.config.worker.tracking_uri, run_id=closed_run,
              status="failed", reason="closed by the first dispatcher")  # fmt: skip
    # a job that failed by itself: its worker was alive, its run is the worker's business
    other = dispatcher.store.submit(spec=parse_spec({"name": "ran", "dataset": "iris"}))
    [claimed] = dispatcher.store.claim(owner="alive", lease_seconds=60, ids=[other.id])
    experiment = client.get_experiment_by_name("lost")
    assert experiment is not None
    other_run = client.create_run(experiment.experiment_id).info.run_id
    dispatcher.store.set_run(job_id=other.id, attempt=claimed.attempt, mlflow_run_id=other_run)
    dispatcher.store.finish(job_id=other.id, attempt=claimed.attempt, status="failed",
                            error={"type": "diverged", "message": "lr too large"})  # fmt: skip

    assert sorted(run for _, run, _ in dispatcher.store.lost_runs(since=an_hour_ago())) == (
        sorted([lost_run, cancelled_run, closed_run])
    )
    dispatcher.close_lost_runs()
    assert dispatcher.closer.wait_idle(30)
    runs = {r: client.get_run(r) for r in (lost_run, cancelled_run, closed_run, other_run)}
    assert runs[lost_run].info.status == "FAILED"
    assert runs[cancelled_run].info.status == "KILLED"
    assert runs[lost_run].data.tags["gradq.close_reason"] == "the worker running it was lost"
    assert runs[closed_run].data.tags["gradq.close_reason"] == "closed by the first dispatcher"
    assert runs[other_run].info.status == "RUNNING"
    assert dispatcher.store.lost_runs(since=datetime.now(UTC)) == []  # the lookback bounds it
