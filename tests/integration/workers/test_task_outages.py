"""An attempt that meets an outage: the database away mid-attempt or at the final write,
MLflow away when the run is closed.

The attempt runs in this process (no Ray) against a real SQLite queue and MLflow store; the
outage is injected into ``JobStore.finish``, ``set_run`` or ``heartbeat``, or
``JobTracker.finish``, only. Before the fixes
a database error escaped ``run_attempt`` and skipped ``lease.close()`` (the heartbeat thread,
in a worker process Ray keeps for reuse, went on renewing the lease of a job nobody would
finish: stuck in ``running`` for ever), a database error mid-attempt failed a job that had
done nothing wrong, and a run MLflow could not close left the job ``succeeded`` without its
metrics or model (a silent gap).
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

import workers.task as task
from core.spec import parse_spec
from db.errors import StoreUnavailable
from db.migrate import upgrade
from db.session import make_engine
from db.states import JobStatus
from db.store import JobStore
from workers.task import WorkerConfig, run_attempt
from workers.tracking import JobTracker

pytestmark = pytest.mark.chaos

SPEC = {"name": "iris", "dataset": "iris", "model": {"hidden": [8]},
        "optimizer": {"epochs": 3, "batch_size": 16}}  # fmt: skip


@pytest.fixture
def setup(tmp_path: Path) -> Iterator[tuple[JobStore, WorkerConfig]]:
    url = f"sqlite:///{tmp_path}/gradq.db"
    upgrade(url)
    engine = make_engine(url)
    config = WorkerConfig(
        database_url=url, tracking_uri=f"sqlite:///{tmp_path}/mlflow.db",
        artifact_root=str(tmp_path / "artifacts"), lease_seconds=1.0, heartbeat_seconds=0.2,
        checkpoint_upload_seconds=0.0,
    )  # fmt: skip
    yield JobStore(engine), config
    engine.dispose()


def outage(monkeypatch: pytest.MonkeyPatch, failures: int, method: str = "finish") -> list[int]:
    """``JobStore.<method>`` raises what the store raises for a lost connection
    (``StoreUnavailable``; tests/integration/db/test_db_unavailable.py) ``failures`` times."""
    real = getattr(JobStore, method)
    calls: list[int] = []

    def flaky(self: JobStore, **kwargs: Any) -> Any:
        calls.append(1)
        if len(calls) <= failures:
            raise StoreUnavailable("server closed the connection")
        return real(self, **kwargs)

    monkeypatch.setattr(JobStore, method, flaky)
    return calls


def lease_threads(job_id: str) -> list[threading.Thread]:
    return [t for t in threading.enumerate() if t.name == f"lease-{job_id}" and t.is_alive()]


def test_a_short_outage_at_the_final_write_is_retried(
    setup: tuple[JobStore, WorkerConfig], monkeypatch: pytest.MonkeyPatch
) -> None:
    store, config = setup
    job = store.submit(spec=parse_spec(SPEC))
    [claimed] = store.claim(owner="test", lease_seconds=30)
    calls = outage(monkeypatch, failures=2)
    assert run_attempt(config, claimed) == "succeeded"
    assert len(calls) == 3
    assert store.get(job_id=job.id).status is JobStatus.SUCCEEDED
    assert lease_threads(job.id) == []


def test_heartbeats_that_meet_an_outage_keep_the_lease(
    setup: tuple[JobStore, WorkerConfig], monkeypatch: pytest.MonkeyPatch
) -> None:
    """StoreUnavailable is a StoreError, like the refusals that end an attempt: a heartbeat
    that meets it (here the first, made before training starts) retries instead."""
    store, config = setup
    job = store.submit(spec=parse_spec(SPEC))
    [claimed] = store.claim(owner="test", lease_seconds=30)
    calls = outage(monkeypatch, failures=1, method="heartbeat")
    assert run_attempt(config, claimed) == "succeeded"
    assert calls  # the first heartbeat met the outage
    assert store.get(job_id=job.id).status is JobStatus.SUCCEEDED


def test_a_long_outage_stops_the_heartbeats_so_the_lease_runs_out(
    setup: tuple[JobStore, WorkerConfig], monkeypatch: pytest.MonkeyPatch
) -> None:
    store, config = setup
    job = store.submit(spec=parse_spec(SPEC))
    [claimed] = store.claim(owner="test", lease_seconds=30)
    outage(monkeypatch, failures=10**6)
    monkeypatch.setattr(task, "FINAL_WRITE_RETRY_S", 0.5)
    assert run_attempt(config, claimed) == "stale"
    assert lease_threads(job.id) == []  # nothing renews the lease any more
    time.sleep(config.lease_seconds + 0.5)
    assert store.requeue_expired() == [(job.id, JobStatus.QUEUED)]  # it will run again


def test_a_run_mlflow_cannot_close_fails_the_job_with_a_clear_reason(
    setup: tuple[JobStore, WorkerConfig], monkeypatch: pytest.MonkeyPatch
) -> None:
    store, config = setup
    job = store.submit(spec=parse_spec(SPEC))
    [claimed] = store.claim(owner="test", lease_seconds=30)

    def down(self: JobTracker, **kwargs: Any) -> None:
        raise RuntimeError("could not flush buffered metrics to MLflow")

    monkeypatch.setattr(JobTracker, "finish", down)
    assert run_attempt(config, claimed) == "failed"
    done = store.get(job_id=job.id)
    assert done.status is JobStatus.FAILED and done.error is not None
    assert done.error["type"] == "tracking_failed"
    assert "could not flush buffered metrics" in done.error["message"]
    assert lease_threads(job.id) == []


def test_a_database_outage_mid_attempt_gives_the_job_back_instead_of_failing_it(
    setup: tuple[JobStore, WorkerConfig], monkeypatch: pytest.MonkeyPatch
) -> None:
    store, config = setup
    job = store.submit(spec=parse_spec(SPEC))
    [claimed] = store.claim(owner="test", lease_seconds=30)

    def down(self: JobStore, **kwargs: Any) -> None:  # the run id cannot be saved
        raise StoreUnavailable("the database system is starting up")

    monkeypatch.setattr(JobStore, "set_run", down)
    assert run_attempt(config, claimed) == "stale"  # not "failed": the job did nothing wrong
    assert store.get(job_id=job.id).status is JobStatus.RUNNING
    assert lease_threads(job.id) == []
    time.sleep(config.lease_seconds + 0.5)
    assert store.requeue_expired() == [(job.id, JobStatus.QUEUED)]  # its next attempt resumes


MLFLOW_WRITES = ("log_batch", "log_inputs", "log_artifact", "set_terminated", "set_tag",
                 "update_run", "create_logged_model", "log_outputs", "finalize_logged_model")  # fmt: skip


def test_an_attempt_cut_off_from_the_database_stops_and_leaves_the_run_alone(
    setup: tuple[JobStore, WorkerConfig], monkeypatch: pytest.MonkeyPatch
) -> None:
    """Heartbeats fail (``StoreUnavailable``) from the third epoch on: once the lease the last one
    renewed has run out, the job may be another attempt's, so this one stops training within
    an epoch and makes no MLflow write (metrics, checkpoint, model, FINISHED) after that
    deadline. Every MLflow write is stamped on entry; the deadline is stamped after the last
    heartbeat that went through returned, so it is no earlier than the attempt's own."""
    from mlflow import MlflowClient

    store, config = setup
    spec = {**SPEC, "register_as": "cut-off", "optimizer": {"epochs": 400, "batch_size": 16}}
    job = store.submit(spec=parse_spec(spec))
    [claimed] = store.claim(owner="test", lease_seconds=30)
    renewed: list[float] = []  # when each heartbeat that went through returned
    epochs: list[int] = []
    real_beat = JobStore.heartbeat

    def beat(self: JobStore, **kwargs: Any) -> Any:
        if len(epochs) >= 3:
            raise StoreUnavailable("server closed the connection")
        answer = real_beat(self, **kwargs)
        renewed.append(time.monotonic())
        return answer

    monkeypatch.setattr(JobStore, "heartbeat", beat)
    writes: list[tuple[str, float]] = []
    for name in MLFLOW_WRITES:
        real = getattr(MlflowClient, name)

        def stamped(*args: Any, _real: Any = real, _name: str = name, **kwargs: Any) -> Any:
            writes.append((_name, time.monotonic()))
            return _real(*args, **kwargs)

        monkeypatch.setattr(MlflowClient, name, stamped)
    real_end = task.Lease.on_epoch_end

    def slow_epoch(self: task.Lease, record: Any) -> None:  # each epoch lasts 50 ms at least
        epochs.append(record.epoch)
        time.sleep(0.05)
        real_end(self, record)

    monkeypatch.setattr(task.Lease, "on_epoch_end", slow_epoch)
    assert run_attempt(config, claimed) == "stale"
    deadline = renewed[-1] + config.lease_seconds
    assert renewed and writes
    assert [w for w in writes if w[1] > deadline] == []
    assert max(epochs) < 400  # stopped long before the last epoch
    assert lease_threads(job.id) == []
    client = MlflowClient(config.tracking_uri)
    run_id = store.get(job_id=job.id).mlflow_run_id
    assert run_id is not None
    assert client.get_run(run_id).info.status == "RUNNING"  # its successor resumes and closes it
    assert client.search_model_versions("name='cut-off'") == []
    assert store.get(job_id=job.id).status is JobStatus.RUNNING


def test_the_model_is_registered_once_when_the_final_write_outlasts_its_retries(
    setup: tuple[JobStore, WorkerConfig], monkeypatch: pytest.MonkeyPatch
) -> None:
    """The first attempt registers the model and closes its run, then its final write meets a
    database outage longer than its retries: the job runs again, resumes the run and
    succeeds; the registry holds one version of the job's model, tagged with the job."""
    from mlflow import MlflowClient

    store, config = setup
    job = store.submit(spec=parse_spec({**SPEC, "register_as": "once"}))
    [first] = store.claim(owner="test", lease_seconds=30)
    with monkeypatch.context() as m:
        m.setattr(task, "FINAL_WRITE_RETRY_S", 0.5)
        outage(m, failures=10**6)
        assert run_attempt(config, first) == "stale"
    time.sleep(config.lease_seconds + 0.5)
    assert store.requeue_expired() == [(job.id, JobStatus.QUEUED)]
    [second] = store.claim(owner="test", lease_seconds=30)
    assert second.attempt == 2 and second.mlflow_run_id is not None
    assert run_attempt(config, second) == "succeeded"
    versions = MlflowClient(config.tracking_uri).search_model_versions("name='once'")
    assert [(str(v.version), v.tags.get("gradq.job_id")) for v in versions] == [("1", job.id)]


def test_a_database_outage_a_job_retries_ends_the_attempt_as_a_retry(
    setup: tuple[JobStore, WorkerConfig], monkeypatch: pytest.MonkeyPatch
) -> None:
    """With ``database_unavailable`` in its ``retry.on``, a job whose attempt met the database
    away (here its run id could not be saved) ends that attempt as soon as the database
    answers again: failed → queued as a retry, the event naming the class; no lease wait."""
    store, config = setup
    retry = {"max": 2, "on": ["database_unavailable"], "backoff_seconds": 0}
    job = store.submit(spec=parse_spec({**SPEC, "retry": retry}))
    [claimed] = store.claim(owner="test", lease_seconds=30)
    outage(monkeypatch, failures=1, method="set_run")
    assert run_attempt(config, claimed) == "failed"
    retried = store.get(job_id=job.id)
    assert retried.status is JobStatus.QUEUED and retried.retries == 1
    assert retried.error["type"] == "database_unavailable"
    reason = store.events(job_id=job.id)[-1].reason or ""
    assert reason.startswith("retry 1 of 2 after database_unavailable (the database went away")
    assert lease_threads(job.id) == []
    [again] = store.claim(owner="test", lease_seconds=30)
    assert again.attempt == 2 and run_attempt(config, again) == "succeeded"
    assert store.get(job_id=job.id).status is JobStatus.SUCCEEDED
