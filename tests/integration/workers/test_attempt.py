"""One attempt run in this process (``run_attempt`` without Ray) against the real job database
(SQLite) and a real MLflow SQLite store: what a job's final status promises about MLflow."""

from __future__ import annotations

import dataclasses
import logging
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from mlflow import MlflowClient

import workers.task
import workers.tracking.run
from core.spec import parse_spec
from db.migrate import upgrade
from db.session import make_engine
from db.store import JobStore
from db.views import JobView
from workers.task import WorkerConfig, run_attempt
from workers.tracking.client import run_page, run_url

pytestmark = pytest.mark.slow

SPEC = {"name": "iris", "dataset": "iris", "model": {"hidden": [8]}, "optimizer": {"epochs": 2}}


@dataclass(frozen=True)
class Stores:
    """The module's job database and MLflow store (creating an MLflow store is slow)."""

    jobs: JobStore
    config: WorkerConfig


@pytest.fixture(scope="module")
def stores(tmp_path_factory: pytest.TempPathFactory) -> Stores:
    folder = tmp_path_factory.mktemp("attempt")
    db_url = f"sqlite:///{folder}/gradq.db"
    upgrade(db_url)
    config = WorkerConfig(
        database_url=db_url,
        tracking_uri=f"sqlite:///{folder}/mlflow.db",
        artifact_root=str(folder / "artifacts"),
    )
    return Stores(JobStore(make_engine(db_url)), config)


def attempt(stores: Stores) -> tuple[str, JobView]:
    """Submit, claim and run one job here; (what ``run_attempt`` returned, the job after)."""
    job_id = stores.jobs.submit(spec=parse_spec(SPEC)).id
    [claimed] = stores.jobs.claim(owner="test", limit=1, ids=[job_id], lease_seconds=30)
    outcome = run_attempt(stores.config, claimed)
    return outcome, stores.jobs.get(job_id=job_id)


def test_a_job_whose_model_cannot_be_logged_fails_and_its_run_ends_failed(
    stores: Stores, monkeypatch: pytest.MonkeyPatch
) -> None:
    def broken(*args: Any, **kwargs: Any) -> None:
        raise ConnectionError("artifact store unreachable")

    monkeypatch.setattr(workers.tracking.run, "log_model", broken)
    outcome, job = attempt(stores)
    assert outcome == "failed" and job.status.value == "failed"
    assert job.error is not None and job.error["type"] == "tracking_failed"
    assert "artifact store unreachable" in job.error["message"]
    assert job.result is None and job.mlflow_run_id is not None
    client = MlflowClient(stores.config.tracking_uri)
    run = client.get_run(job.mlflow_run_id)
    assert run.info.status == "FAILED"
    assert "artifact store unreachable" in run.data.tags["gradq.close_reason"]
    # the epochs were still buffered when the model failed: they are in the run all the same
    history = client.get_metric_history(job.mlflow_run_id, "loss/train")
    assert sorted(m.step for m in history) == list(range(1, SPEC["optimizer"]["epochs"] + 1))


def test_a_succeeded_job_has_its_model_in_mlflow(stores: Stores) -> None:
    outcome, job = attempt(stores)
    assert outcome == "succeeded" and job.status.value == "succeeded"
    assert job.mlflow_run_id is not None
    client = MlflowClient(stores.config.tracking_uri)
    run = client.get_run(job.mlflow_run_id)
    assert run.info.status == "FINISHED"
    # stored with the run id: the API's link (no MLflow call) is the one MLflow would give
    assert job.mlflow_experiment_id == run.info.experiment_id
    ui, uri = "http://ui:5000", stores.config.tracking_uri
    assert run_page(ui_base=ui, experiment_id=job.mlflow_experiment_id, run_id=run.info.run_id) == (
        run_url(ui_base=ui, tracking_uri=uri, run_id=run.info.run_id))  # fmt: skip
    model_id = run.data.tags["gradq.model_uri"].removeprefix("models:/")
    assert str(client.get_logged_model(model_id).status) == "READY"


def test_a_worker_process_between_attempts_holds_no_database_connection(stores: Stores) -> None:
    """Ray keeps idle worker processes for reuse: each closes its pooled connections when its
    attempt ends, so only running attempts count against the database's connections."""
    outcome, _ = attempt(stores)
    assert outcome == "succeeded"
    pool = workers.task._engine(stores.config).pool  # the one the attempt used
    assert (pool.checkedin(), pool.checkedout()) == (0, 0)


def test_an_unexpected_failure_keeps_its_traceback_for_operators(
    stores: Stores,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
    tmp_path: Path,
) -> None:
    """The API answers a failed job without its traceback (api.present): the job's row, the
    worker's log and the run's error.txt keep it."""

    def broken(*args: Any, **kwargs: Any) -> None:
        raise RuntimeError("boom in the training loop")

    monkeypatch.setattr(workers.task, "train", broken)
    with caplog.at_level(logging.ERROR, logger="gradq.task"):
        outcome, job = attempt(stores)
    assert outcome == "failed" and job.error is not None
    assert job.error["message"] == "boom in the training loop"
    assert "Traceback" in job.error["traceback"]
    logged = [r for r in caplog.records if r.exc_info and job.id in r.getMessage()]
    assert logged and "boom in the training loop" in caplog.text and "Traceback" in caplog.text
    assert job.mlflow_run_id is not None
    client = MlflowClient(stores.config.tracking_uri)
    path = client.download_artifacts(job.mlflow_run_id, "error.txt", dst_path=str(tmp_path))
    text = Path(path).read_text()
    assert text.startswith("boom in the training loop") and "Traceback" in text
    assert 'raise RuntimeError("boom in the training loop")' in text
    assert client.get_run(job.mlflow_run_id).data.tags["gradq.error"] == (
        "boom in the training loop"
    )


def test_without_a_stop_board_a_stop_comes_with_the_heartbeat(stores: Stores) -> None:
    """An attempt run without the dispatcher's stop board (``run_attempt(config, claimed)``)
    learns of a stop, and its reason, from its heartbeat, and says so in its final write."""
    long = {**SPEC, "dataset": "digits", "optimizer": {"epochs": 20_000},
            "regularization": {"early_stopping": {"enabled": False}}}  # fmt: skip
    job_id = stores.jobs.submit(spec=parse_spec(long)).id
    [claimed] = stores.jobs.claim(owner="test", limit=1, ids=[job_id], lease_seconds=30)

    def prune_once_it_trains() -> None:
        while stores.jobs.get(job_id=job_id).mlflow_run_id is None:
            time.sleep(0.05)
        stores.jobs.request_stop(job_id=job_id, reason="pruned")

    pruner = threading.Thread(target=prune_once_it_trains, daemon=True)
    pruner.start()
    outcome = run_attempt(dataclasses.replace(stores.config, heartbeat_seconds=0.2), claimed)
    pruner.join()
    job = stores.jobs.get(job_id=job_id)
    assert outcome == "pruned" and job.status.value == "pruned"
    stop = (job.progress or {})["stop"]
    assert (stop["reason"], stop["via"]) == ("pruned", "heartbeat"), stop
    assert stop["signalled_at"] <= stop["stopped_at"]
    assert stores.jobs.events(job_id=job_id)[-1].reason == (
        f"stop requested (pruned), seen through the heartbeat; stopped at step {stop['step']}"
    )
