"""A job has exactly one MLflow run, whatever MLflow's client retries and whichever attempt
creates it — against a real ``mlflow server``.

Between the tracker and the server sits a small HTTP proxy of the test's own, on 127.0.0.1. It
passes every request through, except that it answers 503 to the first ``runs/create`` of a job
after the server has committed it: the answer is lost, as when a server is killed or a
connection drops at that moment, and MLflow's client sends the same create again.
"""

from __future__ import annotations

import threading
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import httpx
import pytest
from mlflow import MlflowClient
from mlflow.entities import ViewType

from core.spec import JobSpec, parse_spec
from workers.tracking import JobTracker

pytestmark = pytest.mark.slow


@dataclass
class LosingProxy:
    """Forwards to ``upstream``; loses the answer of the first ``runs/create`` of each job in
    ``lose_create_of``, after the server committed it."""

    upstream: str
    lose_create_of: set[str] = field(default_factory=set)
    creates: list[str] = field(default_factory=list)  # job ids of every create forwarded
    url: str = ""

    def serve(self) -> ThreadingHTTPServer:
        proxy = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *_: Any) -> None:
                pass

            def _forward(self) -> None:
                body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
                headers = {k: v for k, v in self.headers.items()
                           if k.lower() not in ("host", "content-length", "connection")}  # fmt: skip
                answer = httpx.request(self.command, proxy.upstream + self.path, content=body,
                                       headers=headers, timeout=60)  # fmt: skip
                job = _job_of_create(self.path, body)
                if job is not None:
                    proxy.creates.append(job)
                    if job in proxy.lose_create_of:
                        proxy.lose_create_of.discard(job)
                        self._answer(503, b'{"error_code": "TEMPORARILY_UNAVAILABLE"}', {})
                        return
                kept = {k: v for k, v in answer.headers.items()
                        if k.lower() in ("content-type",)}  # fmt: skip
                self._answer(answer.status_code, answer.content, kept)

            def _answer(self, code: int, body: bytes, headers: dict[str, str]) -> None:
                self.send_response(code)
                for k, v in headers.items():
                    self.send_header(k, v)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            do_GET = do_POST = do_PATCH = do_DELETE = do_PUT = _forward

        server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{server.server_address[1]}"
        threading.Thread(target=server.serve_forever, daemon=True).start()
        return server


def _job_of_create(path: str, body: bytes) -> str | None:
    if not path.split("?")[0].endswith("/runs/create"):
        return None
    import json

    tags = json.loads(body or b"{}").get("tags") or []
    return next((t["value"] for t in tags if t.get("key") == "gradq.job_id"), None)


@pytest.fixture(scope="module")
def proxy(mlflow_server: str) -> Iterator[LosingProxy]:
    losing = LosingProxy(mlflow_server)
    server = losing.serve()
    yield losing
    server.shutdown()


def spec() -> JobSpec:
    return parse_spec({"name": "one-run", "experiment": "one-run-tests", "dataset": "iris",
                       "model": {"hidden": [4]}, "optimizer": {"epochs": 1}})  # fmt: skip


def job_runs(uri: str, job_id: str, view: int = ViewType.ACTIVE_ONLY) -> list[Any]:
    client = MlflowClient(tracking_uri=uri)
    experiments = [e.experiment_id for e in client.search_experiments(view_type=ViewType.ALL)]
    return list(client.search_runs(experiments, f"tags.`gradq.job_id` = '{job_id}'",
                                   run_view_type=view))  # fmt: skip


def test_a_retried_create_run_leaves_the_job_one_run(proxy: LosingProxy) -> None:
    job_id = str(uuid.uuid4())
    proxy.lose_create_of.add(job_id)
    tracker = JobTracker(tracking_uri=proxy.url, job_id=job_id, spec=spec(), attempt=1)
    run_id = tracker.start()
    tracker.finish(status="cancelled")
    # the client did send the create twice, and the server committed both
    assert proxy.creates.count(job_id) == 2, proxy.creates
    assert len(job_runs(proxy.upstream, job_id, ViewType.ALL)) == 2
    live = job_runs(proxy.upstream, job_id)
    assert [r.info.run_id for r in live] == [run_id]
    assert live[0].info.status == "KILLED"  # the kept run is the one the attempt closed
    assert live[0].data.params["model.hidden"] == "[4]"


def test_a_later_attempt_keeps_the_first_run_and_deletes_the_others(proxy: LosingProxy) -> None:
    job_id = str(uuid.uuid4())
    client = MlflowClient(tracking_uri=proxy.upstream)
    experiment = client.get_experiment_by_name("one-run-tests") or client.get_experiment(
        client.create_experiment("one-run-tests")
    )
    tags = {"gradq.job_id": job_id}
    first = client.create_run(experiment.experiment_id, start_time=1_000, tags=tags)
    second = client.create_run(experiment.experiment_id, start_time=2_000, tags=tags)
    tracker = JobTracker(tracking_uri=proxy.url, job_id=job_id, spec=spec(), attempt=2)
    assert tracker.start() == first.info.run_id
    tracker.finish(status="cancelled")
    assert [r.info.run_id for r in job_runs(proxy.upstream, job_id)] == [first.info.run_id]
    assert client.get_run(second.info.run_id).info.lifecycle_stage == "deleted"
