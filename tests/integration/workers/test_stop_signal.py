"""A stop (a cancel, or a sweep's prune) reaches a running attempt through the stop signal
(``workers.stops``), not through its heartbeat: on a real local Ray, the real queue (SQLite)
and MLflow store, with a heartbeat interval of ten minutes and a grace before a forced kill as
long, a job cancelled while it trains ends within the test's wait with the attempt's own final
write, which names the reason, the path that carried it and the step it stopped at."""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from dispatching import running, wait
from mlflow import MlflowClient

from core.spec import parse_spec
from db.states import JobStatus
from db.store import JobStore
from db.views import JobView
from workers.dispatcher import Dispatcher

pytestmark = pytest.mark.slow

# No heartbeat after the attempt's first one can run within the test's waits (WAIT_S), and no
# forced kill either: only the stop signal can end the job in time.
HEARTBEAT_S = 600.0
WAIT_S = 90.0
TERMINAL = ("succeeded", "failed", "cancelled", "pruned")


def long_job(seed: int = 0) -> dict[str, Any]:
    """Minutes of training (digits, wide layers, small batches): it ends only by a stop."""
    return {
        "name": f"digits-long-{seed}", "dataset": "digits", "model": {"hidden": [256, 256]},
        "optimizer": {"epochs": 2000, "batch_size": 8, "lr": 0.01}, "seed": seed,
        "regularization": {"early_stopping": {"enabled": False}},
    }  # fmt: skip


@pytest.fixture
def service(ray_local: None, tmp_path: Path) -> Iterator[tuple[JobStore, Dispatcher]]:
    worker = {"heartbeat_seconds": HEARTBEAT_S, "lease_seconds": 2 * HEARTBEAT_S}
    with running(tmp_path, worker=worker, stop_grace_seconds=HEARTBEAT_S) as both:
        yield both


@pytest.fixture
def store(service: tuple[JobStore, Dispatcher]) -> JobStore:
    return service[0]


def training(store: JobStore) -> str:
    """A long job whose attempt has started its MLflow run (it trains next)."""
    job_id = store.submit(spec=parse_spec(long_job())).id
    wait(store, job_id, lambda j: j.mlflow_run_id is not None, timeout=WAIT_S)
    return job_id


def ended(store: JobStore, job_id: str) -> JobView:
    return wait(store, job_id, lambda j: j.status.value in TERMINAL, timeout=WAIT_S)


def test_a_cancel_reaches_the_running_attempt_through_the_stop_signal(
    service: tuple[JobStore, Dispatcher], tmp_path: Path
) -> None:
    store, dispatcher = service
    job_id = training(store)
    store.request_cancel(job_id=job_id)
    job = ended(store, job_id)
    assert job.status is JobStatus.CANCELLED
    stop = (job.progress or {}).get("stop")
    assert stop is not None, job.progress
    assert stop["reason"] == "cancel" and stop["via"] == "signal", stop
    assert 1 <= stop["step"] < long_job()["optimizer"]["epochs"] * 1000  # between two steps
    last = store.events(job_id=job_id)[-1]
    assert (last.from_status, last.to_status) == (JobStatus.RUNNING, JobStatus.CANCELLED)
    # the attempt's own final write (not a kill settled by the dispatcher), saying why
    assert last.reason == (
        f"stop requested (cancel), seen through the stop signal; stopped at step {stop['step']}"
    )
    client = MlflowClient(tracking_uri=f"sqlite:///{tmp_path}/mlflow.db")
    assert client.get_run(job.mlflow_run_id or "").info.status == "KILLED"
    # once the dispatcher has reaped the attempt, its board keeps nothing of it
    import ray

    deadline = time.monotonic() + WAIT_S
    while (dispatcher.inflight or ray.get(dispatcher.board.attempts.remote())) and (
        time.monotonic() < deadline
    ):
        time.sleep(0.1)
    assert not dispatcher.inflight and ray.get(dispatcher.board.attempts.remote()) == 0


def test_a_prune_reaches_the_running_attempt_with_its_reason(store: JobStore) -> None:
    job_id = training(store)
    store.request_stop(job_id=job_id, reason="pruned")
    job = ended(store, job_id)
    assert job.status is JobStatus.PRUNED
    stop = (job.progress or {}).get("stop")
    assert stop is not None and (stop["reason"], stop["via"]) == ("pruned", "signal"), stop
    assert store.events(job_id=job_id)[-1].reason == (
        f"stop requested (pruned), seen through the stop signal; stopped at step {stop['step']}"
    )
