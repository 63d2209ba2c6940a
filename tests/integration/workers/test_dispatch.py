"""Jobs through the real queue, a real local Ray and a real MLflow store, end to end.

A module-scoped local Ray (2 CPUs, bound to 127.0.0.1 by RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER=0)
and one dispatcher thread per test with short leases so that lost workers are noticed fast.
"""

from __future__ import annotations

import os
import signal
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import mlflow
import numpy as np
import pytest
import torch
from mlflow import MlflowClient

from core.spec import parse_spec
from db.migrate import upgrade
from db.session import make_engine
from db.states import JobStatus
from db.store import JobStore
from db.views import JobView
from workers.dispatcher import Dispatcher, DispatcherConfig
from workers.task import WorkerConfig
from workers.tracking import metric_history

pytestmark = pytest.mark.slow


@dataclass
class Service:
    store: JobStore
    config: WorkerConfig
    tracking_uri: str
    dispatchers: list[Dispatcher]

    def submit(self, spec: dict[str, Any]) -> str:
        return self.store.submit(spec=parse_spec(spec)).id

    def wait(self, job_id: str, until: Callable[[JobView], bool], timeout: float = 90) -> JobView:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            job = self.store.get(job_id=job_id)
            if until(job):
                return job
            time.sleep(0.2)
        raise AssertionError(f"timed out; job is {self.store.get(job_id=job_id)}")

    def wait_terminal(self, job_id: str, timeout: float = 120) -> JobView:
        return self.wait(job_id, lambda j: j.status.value in ("succeeded", "failed", "cancelled"),
                         timeout)  # fmt: skip


@pytest.fixture
def service(ray_local: None, tmp_path: Path, request: pytest.FixtureRequest) -> Iterator[Service]:
    # tests choose with indirect parametrisation: a backend, or {"backend", "lease_seconds"}
    param = getattr(request, "param", "sqlite")
    param = param if isinstance(param, dict) else {"backend": param}
    backend = param.get("backend", "sqlite")
    db_url = (
        request.getfixturevalue("pg_url")
        if backend == "postgres"
        else f"sqlite:///{tmp_path}/gradq.db"
    )
    upgrade(db_url)
    store = JobStore(make_engine(db_url))
    tracking = f"sqlite:///{tmp_path}/mlflow.db"
    config = WorkerConfig(
        database_url=db_url, tracking_uri=tracking, artifact_root=str(tmp_path / "artifacts"),
        lease_seconds=param.get("lease_seconds", 4.0), heartbeat_seconds=0.5,
        metrics_flush_seconds=1.0,
        checkpoint_upload_seconds=0.0,
    )  # fmt: skip
    stops: list[threading.Event] = []
    dispatchers: list[Dispatcher] = []

    def start_dispatcher() -> Dispatcher:
        d = Dispatcher(DispatcherConfig(worker=config, poll_seconds=0.2, requeue_seconds=0.5,
                                        stop_grace_seconds=10.0), store)  # fmt: skip
        d.connect()
        stop = threading.Event()
        threading.Thread(target=d.run, args=(stop,), daemon=True).start()
        stops.append(stop)
        dispatchers.append(d)
        return d

    start_dispatcher()
    svc = Service(store, config, tracking, dispatchers)
    svc.start_dispatcher = start_dispatcher  # type: ignore[attr-defined]
    yield svc
    for stop in stops:
        stop.set()
    import ray

    for d in dispatchers:  # leave nothing running into the next test
        for attempt in d.inflight.values():
            ray.cancel(attempt.ref, force=True)


def small_job(**extra: Any) -> dict[str, Any]:
    job: dict[str, Any] = {
        "name": "iris", "dataset": "iris", "model": {"hidden": [16]},
        "optimizer": {"epochs": 6, "batch_size": 16},
        "regularization": {"early_stopping": {"enabled": False}},
    }  # fmt: skip
    job.update(extra)
    return job


def slow_job(epochs: int = 60) -> dict[str, Any]:
    """Long enough to be interrupted: digits, wide layers, small batches (~0.1 s an epoch)."""
    return {
        "name": "digits-slow", "dataset": "digits", "model": {"hidden": [256, 256]},
        "optimizer": {"epochs": epochs, "batch_size": 8, "lr": 0.01},
        "regularization": {"early_stopping": {"enabled": False}},
    }  # fmt: skip


def events(svc: Service, job_id: str) -> list[tuple[str | None, str]]:
    return [
        (e.from_status.value if e.from_status else None, e.to_status.value)
        for e in svc.store.events(job_id=job_id)
    ]


BOTH = pytest.mark.parametrize(
    "service", ["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)], indirect=True
)


@BOTH
def test_job_succeeds_with_run_metrics_and_a_model(service: Service) -> None:
    job_id = service.submit(small_job())
    job = service.wait_terminal(job_id)
    assert job.status is JobStatus.SUCCEEDED, job.error
    assert events(service, job_id) == [(None, "queued"), ("queued", "running"),
                                        ("running", "succeeded")]  # fmt: skip
    assert job.attempt == 1 and job.result is not None and job.mlflow_run_id
    client = MlflowClient(tracking_uri=service.tracking_uri)
    run = client.get_run(job.mlflow_run_id)
    assert run.info.status == "FINISHED" and run.data.tags["gradq.job_id"] == job_id
    for key in ("loss/train", "loss/val"):
        steps = [s for s, _ in metric_history(tracking_uri=service.tracking_uri,
                                              run_id=job.mlflow_run_id, key=key)]  # fmt: skip
        assert steps == list(range(1, 7))
    assert run.data.tags["mlflow.note.content"].startswith(f"gradq job {job_id} on ")
    (trained_on,) = run.inputs.dataset_inputs  # the run page's "Datasets" panel
    assert trained_on.dataset.name == parse_spec(small_job()).dataset.name
    assert [(t.key, t.value) for t in trained_on.tags] == [("mlflow.data.context", "training")]
    artifacts = {a.path for a in client.list_artifacts(job.mlflow_run_id)}
    assert {"checkpoints", "gradcheck", "plots"} <= artifacts
    mlflow.set_tracking_uri(service.tracking_uri)
    try:
        model = mlflow.pytorch.load_model(run.data.tags["gradq.model_uri"])
    finally:
        mlflow.set_tracking_uri(None)  # type: ignore[arg-type]  # None unsets it
    from core.data import load_dataset

    data = load_dataset(parse_spec(small_job()).dataset, seed=0)
    probs = model(torch.as_tensor(data.raw(data.X_test), dtype=torch.float32))
    acc = float((probs.argmax(1).numpy() == data.y_test).mean())
    assert acc == pytest.approx(job.result["metrics"]["test_accuracy"])


@pytest.mark.chaos  # a worker process lost mid-training
def test_killed_worker_resumes_from_its_checkpoint(service: Service) -> None:
    job_id = service.submit(slow_job(epochs=40))
    job = service.wait(job_id, lambda j: (j.progress or {}).get("epoch", 0) >= 4)
    pid = job.progress["pid"]  # type: ignore[index]
    os.kill(pid, signal.SIGKILL)
    job = service.wait_terminal(job_id, timeout=240)
    assert job.status is JobStatus.SUCCEEDED, job.error
    assert job.attempt == 2
    assert job.result is not None and job.result["resumed_from_epoch"] >= 4
    transitions = events(service, job_id)
    assert transitions.count(("queued", "running")) == 2
    assert ("running", "queued") in transitions  # the attempt died and the job went back
    steps = [s for s, _ in metric_history(tracking_uri=service.tracking_uri,
                                          run_id=job.mlflow_run_id or "", key="loss/train")]  # fmt: skip
    assert steps == list(range(1, 41))  # continuous: no gap, no duplicate


@pytest.mark.chaos  # a worker process lost mid-training, under a lease of a minute
@pytest.mark.parametrize("service", [{"lease_seconds": 60.0}], indirect=True)
def test_a_killed_attempt_is_settled_at_once_not_a_lease_later(service: Service) -> None:
    job_id = service.submit(slow_job(epochs=40))
    job = service.wait(job_id, lambda j: (j.progress or {}).get("epoch", 0) >= 2)
    assert job.lease_expires_at is not None
    assert (job.lease_expires_at - datetime.now(UTC)).total_seconds() > 30  # a long lease
    os.kill(job.progress["pid"], signal.SIGKILL)  # type: ignore[index]
    # The dispatcher sees the task die and settles the job: it leaves attempt 1's "running"
    # within 5 s of the kill, not when the lease would have expired (a minute).
    service.wait(job_id, lambda j: j.status is not JobStatus.RUNNING or j.attempt > 1, timeout=5)
    left = [e for e in service.store.events(job_id=job_id) if e.from_status is JobStatus.RUNNING]
    assert left and left[0].attempt == 1 and left[0].to_status is JobStatus.QUEUED, left
    assert left[0].reason is not None and "attempt died (" in left[0].reason, left[0].reason
    assert "Error" in left[0].reason, left[0].reason  # the death named: Ray's exception type
    job = service.wait_terminal(job_id, timeout=240)
    assert job.status is JobStatus.SUCCEEDED and job.attempt == 2, job.error


def test_cancel_running_and_queued(service: Service) -> None:
    running = service.submit(slow_job(epochs=2000))  # minutes: it only ends by the cancel
    blocker = service.submit(slow_job(epochs=2000))
    training = lambda j: bool(j.mlflow_run_id) and (j.progress or {}).get("epoch", 0) >= 1  # noqa: E731
    service.wait(running, training)
    service.wait(blocker, training)
    queued = service.submit(small_job())  # both CPUs are taken: it stays queued
    time.sleep(1.0)
    assert service.store.get(job_id=queued).status is JobStatus.QUEUED
    assert service.store.request_cancel(job_id=queued).status is JobStatus.CANCELLED
    t0 = time.monotonic()
    service.store.request_cancel(job_id=running)
    job = service.wait_terminal(running, timeout=30)
    assert job.status is JobStatus.CANCELLED and time.monotonic() - t0 < 15
    client = MlflowClient(tracking_uri=service.tracking_uri)
    assert client.get_run(job.mlflow_run_id or "").info.status == "KILLED"
    service.store.request_cancel(job_id=blocker)
    service.wait_terminal(blocker, timeout=30)
    never = service.store.get(job_id=queued)
    assert never.attempt == 0 and never.started_at is None
    assert events(service, queued) == [(None, "queued"), ("queued", "cancelled")]


def test_divergence_and_failed_gradient_check_fail_the_job(service: Service) -> None:
    diverging = service.submit(small_job(optimizer={"lr": 1e6, "epochs": 5}))
    strict = service.submit(small_job(gradcheck={"fd_tolerance": 1e-300}))
    job = service.wait_terminal(diverging)
    assert job.status is JobStatus.FAILED and job.error["type"] == "diverged", job.error
    assert "diverged at epoch" in job.error["message"]
    job = service.wait_terminal(strict)
    assert job.status is JobStatus.FAILED and job.error["type"] == "gradcheck_failed", job.error
    report = job.error["report"]
    assert report["passed"] is False and report["tensors"]
    ok = service.submit(small_job())  # the service keeps serving
    assert service.wait_terminal(ok).status is JobStatus.SUCCEEDED


def test_unsatisfiable_resources_fail_with_a_reason(service: Service) -> None:
    job_id = service.submit(small_job(resources={"cpus": 1, "gpus": 8}))
    job = service.wait_terminal(job_id, timeout=30)
    assert job.status is JobStatus.FAILED and job.attempt == 0
    assert "no node of the cluster can run it" in str(job.error)


@BOTH
def test_two_dispatchers_run_each_job_once(service: Service) -> None:
    service.start_dispatcher()  # type: ignore[attr-defined]
    ids = [service.submit(small_job(seed=i)) for i in range(6)]
    jobs = [service.wait_terminal(i) for i in ids]
    assert all(j.status is JobStatus.SUCCEEDED for j in jobs)
    assert all(j.attempt == 1 for j in jobs)
    for job_id in ids:
        assert events(service, job_id).count(("queued", "running")) == 1
    owners = {j.lease_owner for j in jobs} | {
        e.reason
        for i in ids
        for e in service.store.events(job_id=i)
        if e.to_status.value == "running"
    }
    assert owners  # each claim names its dispatcher
    assert np.isfinite([j.result["metrics"]["test_accuracy"] for j in jobs]).all()  # type: ignore[index]


def test_small_jobs_run_past_a_head_waiting_for_room(service: Service) -> None:
    """Backfill on a real Ray: with 1 of the node's 2 CPUs taken, a 2-CPU job at the head of
    the queue waits, saying so and keeping its place, while the 1-CPU job behind it runs at
    once; the head starts as soon as the CPU is free."""
    blocker = service.submit(slow_job(epochs=2000))  # minutes: it only ends by the cancel
    service.wait(blocker, lambda j: j.status is JobStatus.RUNNING)
    head = service.submit(small_job(resources={"cpus": 2}))
    behind = service.submit(small_job(seed=1))
    assert service.wait_terminal(behind).status is JobStatus.SUCCEEDED
    waiting = service.store.get(job_id=head)
    assert waiting.status is JobStatus.QUEUED and waiting.attempt == 0
    assert (waiting.pending_reason or "").startswith(
        "waiting for resources: needs 2 CPU / 0 GPU / "
    ), waiting.pending_reason
    assert service.store.queue_position(job_id=head) == 0
    assert service.store.get(job_id=blocker).status is JobStatus.RUNNING
    service.store.request_cancel(job_id=blocker)
    service.wait_terminal(blocker, timeout=30)
    assert service.wait_terminal(head).status is JobStatus.SUCCEEDED
    started = {e.to_status.value: e.at for e in service.store.events(job_id=head)}["running"]
    ended = {e.to_status.value: e.at for e in service.store.events(job_id=blocker)}["cancelled"]
    assert started >= ended  # it never ran beside the blocker: its room was not free before
