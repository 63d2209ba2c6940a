"""An MLflow server that goes away while it answers: the attempt's tracker waits for it, as
for any other outage, and the job still ends with exactly one run — against a real
``mlflow server``.

Between the tracker and the server sits a small HTTP proxy of the test's own, on 127.0.0.1. It
passes every request through, except the first ``cut`` answers of the endpoints it is told
to cut: for those it forwards the request (the server does the work), then sends the answer's
status line and a ``Content-Length`` but none of the body, and closes the connection — what
the MLflow client sees when the server is killed mid-answer (``IncompleteRead``, which its
own HTTP retries do not cover).
"""

from __future__ import annotations

import socket
import threading
import uuid
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import httpx
import pytest
from mlflow import MlflowClient
from mlflow.entities import ViewType
from mlflow.exceptions import MlflowException

import workers.tracking.run as tracking_run
from core.spec import JobSpec, parse_spec
from db.migrate import upgrade
from db.session import make_engine
from db.states import JobStatus
from db.store import JobStore
from workers.task import WorkerConfig, run_attempt
from workers.tracking import JobTracker
from workers.tracking.run import LeaseExpired

pytestmark = pytest.mark.slow

SEARCH = "runs/search"


@dataclass
class CuttingProxy:
    """Forwards to ``upstream``; the next ``cut[endpoint]`` answers of an endpoint (the path
    after ``/api/2.0/mlflow/``) lose their body and their connection."""

    upstream: str
    cut: Counter[str] = field(default_factory=Counter)
    asked: Counter[str] = field(default_factory=Counter)  # requests forwarded, by endpoint
    cuts: Counter[str] = field(default_factory=Counter)  # answers cut off, by endpoint
    url: str = ""

    def serve(self) -> ThreadingHTTPServer:
        proxy = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"  # keep-alive, as MLflow's client uses it

            def log_message(self, *_: Any) -> None:
                pass

            def _forward(self) -> None:
                body = self._body()
                headers = {k: v for k, v in self.headers.items() if k.lower() not in
                           ("host", "content-length", "connection", "transfer-encoding")}  # fmt: skip
                answer = httpx.request(self.command, proxy.upstream + self.path, content=body,
                                       headers=headers, timeout=60)  # fmt: skip
                endpoint = self.path.split("?")[0].split("/api/2.0/mlflow/")[-1]
                proxy.asked[endpoint] += 1
                self.send_response(answer.status_code)
                if "content-type" in answer.headers:
                    self.send_header("Content-Type", answer.headers["content-type"])
                self.send_header("Content-Length", str(len(answer.content)))
                self.end_headers()
                if proxy.cut[endpoint] > 0:  # the server "dies" before the body is out
                    proxy.cut[endpoint] -= 1
                    proxy.cuts[endpoint] += 1
                    self.wfile.flush()
                    self.connection.shutdown(socket.SHUT_RDWR)
                    self.close_connection = True
                    return
                self.wfile.write(answer.content)

            def _body(self) -> bytes:
                if self.headers.get("Transfer-Encoding", "").lower() != "chunked":
                    return self.rfile.read(int(self.headers.get("Content-Length") or 0))
                chunks = []
                while size := int(self.rfile.readline().split(b";")[0], 16):
                    chunks.append(self.rfile.read(size))
                    self.rfile.readline()
                self.rfile.readline()
                return b"".join(chunks)

            do_GET = do_POST = do_PATCH = do_DELETE = do_PUT = _forward

        server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{server.server_address[1]}"
        threading.Thread(target=server.serve_forever, daemon=True).start()
        return server


@pytest.fixture
def proxy(mlflow_server: str, monkeypatch: pytest.MonkeyPatch) -> Iterator[CuttingProxy]:
    monkeypatch.setattr(tracking_run, "START_RETRY_WAIT_S", 0.0, raising=False)  # no waits
    cutting = CuttingProxy(mlflow_server)
    server = cutting.serve()
    yield cutting
    server.shutdown()


SPEC = {"name": "cut-off", "experiment": "cut-off-tests", "dataset": "iris",
        "model": {"hidden": [4]}, "optimizer": {"epochs": 2, "batch_size": 16}}  # fmt: skip


def spec() -> JobSpec:
    return parse_spec(SPEC)


def job_runs(uri: str, job_id: str) -> list[Any]:
    client = MlflowClient(tracking_uri=uri)
    experiments = [e.experiment_id for e in client.search_experiments(view_type=ViewType.ALL)]
    return list(client.search_runs(experiments, f"tags.`gradq.job_id` = '{job_id}'",
                                   run_view_type=ViewType.ACTIVE_ONLY))  # fmt: skip


def test_answers_cut_off_at_tracker_start_are_retried_and_the_job_has_one_run(
    proxy: CuttingProxy, tmp_path: Path
) -> None:
    """The chaos test's flake: the server killed while it answered the ``runs/search`` that
    the tracker's start makes after creating the run. Before the fix the attempt failed
    (``MlflowException: … IncompleteRead``) with no run id."""
    url = f"sqlite:///{tmp_path}/gradq.db"
    upgrade(url)
    engine = make_engine(url)
    store = JobStore(engine)
    config = WorkerConfig(database_url=url, tracking_uri=proxy.url, heartbeat_seconds=0.2,
                          checkpoint_upload_seconds=0.0)  # fmt: skip
    job = store.submit(spec=spec())
    [claimed] = store.claim(owner="test", lease_seconds=30)
    proxy.cut[SEARCH] = 2
    try:
        assert run_attempt(config, claimed) == "succeeded"
        done = store.get(job_id=job.id)
    finally:
        engine.dispose()
    assert proxy.cuts[SEARCH] == 2  # both cut answers were met, and the start went on
    assert proxy.asked["runs/create"] == 3  # each try created a run: two were extra
    assert done.status is JobStatus.SUCCEEDED, done.error
    live = job_runs(proxy.upstream, job.id)
    assert [r.info.run_id for r in live] == [done.mlflow_run_id]  # one run: the job's
    run = live[0]
    assert run.info.status == "FINISHED" and run.data.tags.get("gradq.model_uri")
    history = MlflowClient(tracking_uri=proxy.upstream).get_metric_history(
        run.info.run_id, "loss/train"
    )
    assert sorted(m.step for m in history) == [1, 2]


def test_an_answer_cut_off_when_a_later_attempt_reopens_its_run_is_retried(
    proxy: CuttingProxy,
) -> None:
    job_id = str(uuid.uuid4())
    first = JobTracker(tracking_uri=proxy.url, job_id=job_id, spec=spec(), attempt=1)
    run_id = first.start()
    first.abandon()
    proxy.cut["runs/get"] = 1
    second = JobTracker(tracking_uri=proxy.url, job_id=job_id, spec=spec(), attempt=2,
                        run_id=run_id)  # fmt: skip
    assert second.start() == run_id
    second.finish(status="cancelled")
    assert proxy.cuts["runs/get"] == 1
    live = job_runs(proxy.upstream, job_id)
    assert [r.info.run_id for r in live] == [run_id] and live[0].info.status == "KILLED"
    assert live[0].data.tags["gradq.attempt"] == "2"


def test_a_server_that_keeps_cutting_its_answers_fails_start_after_its_tries(
    proxy: CuttingProxy,
) -> None:
    proxy.cut[SEARCH] = 10**6
    tracker = JobTracker(tracking_uri=proxy.url, job_id=str(uuid.uuid4()), spec=spec(),
                         attempt=2)  # fmt: skip
    with pytest.raises(MlflowException, match="IncompleteRead"):
        tracker.start()
    # one request a try: MLflow's client itself sent no cut-off request again
    assert proxy.asked[SEARCH] == proxy.cuts[SEARCH] == tracking_run.START_TRIES
    assert tracker.run_id is None


def test_an_answer_mlflow_gave_is_not_retried(proxy: CuttingProxy) -> None:
    tracker = JobTracker(tracking_uri=proxy.url, job_id=str(uuid.uuid4()), spec=spec(),
                         attempt=2, run_id="0" * 32)  # fmt: skip
    with pytest.raises(MlflowException) as raised:
        tracker.start()
    assert raised.value.error_code == "RESOURCE_DOES_NOT_EXIST"
    assert proxy.asked["runs/get"] == 1


def test_an_attempt_that_lost_its_lease_stops_retrying(proxy: CuttingProxy) -> None:
    proxy.cut[SEARCH] = 10**6
    tracker = JobTracker(tracking_uri=proxy.url, job_id=str(uuid.uuid4()), spec=spec(),
                         attempt=2, alive=lambda: proxy.cuts[SEARCH] == 0)  # fmt: skip
    with pytest.raises(LeaseExpired):
        tracker.start()
    assert proxy.cuts[SEARCH] == 1 and tracker.run_id is None
