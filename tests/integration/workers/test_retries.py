"""Retries end to end, through the real queue (SQLite and PostgreSQL), a real local Ray and a
real ``mlflow server``: a job whose first attempt meets the tracking server down (stopped,
its port refusing connections, as while it is restarted) fails with
``tracking_unavailable``, goes back to the queue as its ``retry`` says, and its retry
succeeds once the server is back on the same store; a diverging job with the same ``retry``
is never retried.

MLflow's client retries a refused connection for minutes by default: this module's
processes (its Ray workers too, started after it) are told not to
(``MLFLOW_HTTP_REQUEST_MAX_RETRIES=0``), so the outage is met in seconds."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from mlflow import MlflowClient

from core.spec import parse_spec
from db.states import JobStatus

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "deploy"))
from dispatching import running, wait

pytestmark = pytest.mark.slow

BIN = Path(sys.executable).parent
Q, R, F, S = JobStatus.QUEUED, JobStatus.RUNNING, JobStatus.FAILED, JobStatus.SUCCEEDED
RETRY = {"max": 3, "on": ["tracking_unavailable", "database_unavailable"], "backoff_seconds": 1}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture(scope="module", autouse=True)
def refused_at_once() -> Iterator[None]:
    """MLflow's client gives up on a refused connection at once (before Ray starts)."""
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "0")
        yield


@pytest.fixture
def mlflow_port(tmp_path: Path) -> Iterator[tuple[str, list[subprocess.Popen[bytes]]]]:
    """A tracking URI on a free port, and the servers started on it (stopped at the end)."""
    started: list[subprocess.Popen[bytes]] = []
    yield f"http://127.0.0.1:{free_port()}", started
    for process in started:
        os.killpg(process.pid, signal.SIGTERM)
        process.wait(timeout=30)


def start_mlflow(folder: Path, uri: str) -> subprocess.Popen[bytes]:
    port = uri.rsplit(":", 1)[1]
    out = (folder / "mlflow.log").open("wb")
    process = subprocess.Popen(
        [str(BIN / "mlflow"), "server", "--backend-store-uri", f"sqlite:///{folder}/mlflow.db",
         "--serve-artifacts", "--artifacts-destination", str(folder / "mlartifacts"),
         "--host", "127.0.0.1", "--port", port, "--workers", "1"],
        stdout=out, stderr=subprocess.STDOUT, start_new_session=True, cwd=folder,
    )  # fmt: skip
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        try:
            if httpx.get(f"{uri}/health", timeout=2).status_code == 200:
                return process
        except httpx.TransportError:
            time.sleep(0.3)
    raise AssertionError("mlflow server did not answer:\n" + (folder / "mlflow.log").read_text())


def stop_mlflow(process: subprocess.Popen[bytes], uri: str) -> None:
    """Kill the server and its workers (its process group); return once its port refuses."""
    os.killpg(process.pid, signal.SIGKILL)
    process.wait()
    while True:
        try:
            httpx.get(f"{uri}/health", timeout=2)
        except httpx.ConnectError:
            return
        except httpx.TransportError:  # reset by a worker being killed: not refused yet
            pass
        time.sleep(0.2)


@pytest.mark.parametrize(
    "backend", ["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)]
)
def test_a_job_that_met_mlflow_down_succeeds_on_retry_and_a_diverging_one_is_never_retried(
    refused_at_once: None,
    ray_local: None,
    tmp_path: Path,
    mlflow_port: tuple[str, list[subprocess.Popen[bytes]]],
    backend: str,
    request: pytest.FixtureRequest,
) -> None:
    uri, started = mlflow_port
    db_url = request.getfixturevalue("pg_url") if backend == "postgres" else None
    spec = {"name": "retried", "dataset": "iris", "model": {"hidden": [8]},
            "optimizer": {"epochs": 3, "batch_size": 16}, "retry": RETRY}  # fmt: skip
    started.append(start_mlflow(tmp_path, uri))
    with running(tmp_path, worker={"tracking_uri": uri}, db_url=db_url) as (store, _):
        stop_mlflow(started.pop(), uri)  # the server goes down before the job is submitted
        job_id = store.submit(spec=parse_spec(spec)).id
        retried = wait(store, job_id, lambda j: bool(j.retries), timeout=180)
    # the dispatcher is stopped: the server is back before any retry can be claimed
    assert retried.status is Q and retried.attempt == 1 and retried.mlflow_run_id is None
    assert retried.error["type"] == "tracking_unavailable"
    assert "MLflow could not be reached when the run opened" in retried.error["message"]
    started.append(start_mlflow(tmp_path, uri))
    diverging = {**spec, "name": "diverging", "optimizer": {"lr": 1e6, "epochs": 5}}
    with running(tmp_path, worker={"tracking_uri": uri}, db_url=db_url) as (store, _):
        diverged_id = store.submit(spec=parse_spec(diverging)).id
        done = wait(store, job_id, lambda j: j.status in (S, F), timeout=180)
        diverged = wait(store, diverged_id, lambda j: j.status in (S, F), timeout=180)

    assert done.status is S and done.attempt == 2 and done.retries == 1, done.error
    assert done.error is None and done.result is not None
    moves = [(e.from_status, e.to_status, e.attempt, e.reason or "")
             for e in store.events(job_id=job_id)]  # fmt: skip
    assert [m[:3] for m in moves] == [
        (None, Q, 0), (Q, R, 1), (R, F, 1), (F, Q, 1), (Q, R, 2), (R, S, 2)
    ]  # fmt: skip
    assert moves[2][3].startswith("tracking_unavailable: MLflow could not be reached")
    assert moves[3][3].startswith("retry 1 of 3 after tracking_unavailable (MLflow could not")
    run = MlflowClient(tracking_uri=uri).get_run(done.mlflow_run_id or "")
    assert run.info.status == "FINISHED" and run.data.tags["gradq.attempt"] == "2"

    assert diverged.status is F and diverged.error["type"] == "diverged", diverged.error
    assert diverged.attempt == 1 and not diverged.retries
    assert [(e.from_status, e.to_status) for e in store.events(job_id=diverged_id)][-1] == (R, F)
