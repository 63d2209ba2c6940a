"""What the API tells its clients about the server: no tracebacks of failed jobs, no
exception text or credentials from ``/readyz``; and how many live event streams a tenant
may hold open (each polls the database)."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

import pytest
from fastapi.testclient import TestClient

from db.errors import StoreUnavailable
from db.session import make_engine
from db.store import JobStore

TRACE = 'Traceback (most recent call last):\n  File "/srv/gradq/workers/task.py", line 300\n'
STREAM = {"Accept": "text/event-stream"}


def _fail(tmp_path: Path, job_id: str) -> None:
    engine = make_engine(f"sqlite:///{tmp_path}/gradq.db")
    try:
        error = {"type": "RuntimeError", "message": "boom", "traceback": TRACE}
        JobStore(engine).finish(job_id=job_id, attempt=1, status="failed", error=error)
    finally:
        engine.dispose()


def test_a_failed_jobs_traceback_is_not_answered(
    client: TestClient, running_job: Callable[..., str], tmp_path: Path
) -> None:
    job_id = running_job(run_id="r1", experiment_id="1")
    _fail(tmp_path, job_id)
    shown = client.get(f"/v1/jobs/{job_id}")
    assert shown.json()["error"] == {"type": "RuntimeError", "message": "boom"}
    listed = client.get("/v1/jobs")
    assert listed.json()["items"][0]["error"] == {"type": "RuntimeError", "message": "boom"}
    with client.stream("GET", f"/v1/jobs/{job_id}/events", headers=STREAM) as r:
        text = "".join(r.iter_text())
    end = json.loads(text.split("event: end\ndata: ", 1)[1].split("\n", 1)[0])
    assert end["error"] == {"type": "RuntimeError", "message": "boom"}
    for answer in (shown.text, listed.text, text):
        assert "Traceback" not in answer and "/srv/gradq" not in answer


# --- event streams ----------------------------------------------------------------------------


def test_event_streams_per_tenant_are_bounded_and_freed_on_disconnect(
    make_client: Callable[..., TestClient],
) -> None:
    client = make_client(max_streams_per_tenant=2)
    job_id = client.post("/v1/jobs", json={"dataset": "iris"}).json()["id"]  # stays queued
    url = f"/v1/jobs/{job_id}/events"
    with client.stream("GET", url, headers=STREAM) as first:
        assert next(first.iter_text()).startswith("event: status")
        with client.stream("GET", url, headers=STREAM) as second:
            assert next(second.iter_text()).startswith("event: status")
            with client.stream("GET", url, headers=STREAM) as over:
                assert over.status_code == 429
                error = json.loads(over.read())["error"]
            assert error["code"] == "too_many_streams"
            assert "2" in error["message"] and "GRADQ_MAX_STREAMS_PER_TENANT" in error["message"]
            # the history without a stream is still answered
            assert client.get(url).status_code == 200
        # the second client left: its place is free again
        with client.stream("GET", url, headers=STREAM) as third:
            assert third.status_code == 200
            assert next(third.iter_text()).startswith("event: status")
    assert client.app.state.services.streams.open == {}  # type: ignore[attr-defined]


def test_a_stream_that_ends_frees_its_place(
    make_client: Callable[..., TestClient], running_job: Callable[..., str], tmp_path: Path
) -> None:
    client = make_client(max_streams_per_tenant=1)
    job_id = running_job(run_id="r1", experiment_id="1")
    _fail(tmp_path, job_id)
    for _ in range(3):  # each ends with its `end` event and leaves its place
        with client.stream("GET", f"/v1/jobs/{job_id}/events", headers=STREAM) as r:
            assert r.status_code == 200
            assert "event: end" in "".join(r.iter_text())


def test_streams_of_another_tenant_do_not_count(
    make_client: Callable[..., TestClient], tmp_path: Path
) -> None:
    from db.keys import KeyStore

    keys = KeyStore(make_engine(f"sqlite:///{tmp_path}/gradq.db"))
    a = {"Authorization": f"Bearer {keys.create(tenant='a')[1]}", **STREAM}
    b = {"Authorization": f"Bearer {keys.create(tenant='b')[1]}", **STREAM}
    client = make_client(auth="keys", max_streams_per_tenant=1)
    job_a = client.post("/v1/jobs", json={"dataset": "iris"}, headers=a).json()["id"]
    job_b = client.post("/v1/jobs", json={"dataset": "iris"}, headers=b).json()["id"]
    with client.stream("GET", f"/v1/jobs/{job_a}/events", headers=a) as first:
        assert first.status_code == 200
        with client.stream("GET", f"/v1/jobs/{job_a}/events", headers=a) as over:
            assert over.status_code == 429
        with client.stream("GET", f"/v1/jobs/{job_b}/events", headers=b) as other:
            assert other.status_code == 200


# --- /readyz -----------------------------------------------------------------------------------


def test_readyz_names_what_is_down_without_exception_text_or_credentials(
    client: TestClient, monkeypatch: pytest.MonkeyPatch
) -> None:
    services = client.app.state.services  # type: ignore[attr-defined]

    def database_down() -> str:
        raise StoreUnavailable(
            "(psycopg.OperationalError) connection to postgresql://gradq:hunter2@db:5432/gradq "
            "failed: FATAL password authentication failed"
        )

    def mlflow_down() -> str:
        raise ConnectionError("http://ops:s3cret@mlflow.internal:5000/health refused")

    def ray_down() -> str:
        raise RuntimeError("/srv/gradq/ray/session_latest: no such file")

    monkeypatch.setattr(services.store, "ping", database_down)
    monkeypatch.setattr(services.tracking, "ping", mlflow_down)
    monkeypatch.setattr(services, "ray_probe", ray_down)
    r = client.get("/readyz")
    assert r.status_code == 503
    checks = r.json()["checks"]
    assert {name: c["ok"] for name, c in checks.items()} == {
        "database": False,
        "ray": False,
        "mlflow": False,
    }
    assert "database" in checks["database"]["detail"]
    assert "not reachable" in checks["database"]["detail"]
    assert "MLflow" in checks["mlflow"]["detail"] and "Ray" in checks["ray"]["detail"]
    for secret in ("hunter2", "s3cret", "psycopg", "FATAL", "/srv/gradq", "mlflow.internal",
                   "ConnectionError", "RuntimeError"):  # fmt: skip
        assert secret not in r.text


def test_readyz_shows_the_words_of_a_probe_that_says_why(
    client: TestClient, monkeypatch: pytest.MonkeyPatch
) -> None:
    from workers.probes import NotReady

    def restarting() -> str:
        raise NotReady("the local Ray is restarting: its raylet exited")

    monkeypatch.setattr(client.app.state.services, "ray_probe", restarting)  # type: ignore[attr-defined]
    r = client.get("/readyz")
    assert r.status_code == 503
    assert r.json()["checks"]["ray"] == {
        "ok": False,
        "detail": "Ray is not ready: the local Ray is restarting: its raylet exited",
    }


def test_readyz_masks_a_password_in_what_answered(
    client: TestClient, monkeypatch: pytest.MonkeyPatch
) -> None:
    services = client.app.state.services  # type: ignore[attr-defined]
    monkeypatch.setattr(
        services.tracking, "ping", lambda: "http://ops:s3cret@mlflow.internal:5000 answers /health"
    )
    r = client.get("/readyz")
    assert r.status_code == 200, r.text
    detail = r.json()["checks"]["mlflow"]["detail"]
    assert "s3cret" not in detail and "ops:***@mlflow.internal" in detail


def test_the_streams_end_is_the_job_as_get_answers_it_and_progress_precedes_the_end(
    client: TestClient, running_job: Callable[..., str], tmp_path: Path
) -> None:
    """The same job reads the same in every answer: the ``end`` event's links are those of
    ``GET /v1/jobs/{id}`` (the MLflow link too), and the job's last progress arrives before
    its terminal status, not after it."""
    job_id = running_job(run_id="r1", experiment_id="1")
    engine = make_engine(f"sqlite:///{tmp_path}/gradq.db")
    try:
        JobStore(engine).finish(
            job_id=job_id, attempt=1, status="succeeded", result={}, progress={"epoch": 3}
        )
    finally:
        engine.dispose()
    shown = client.get(f"/v1/jobs/{job_id}").json()
    assert shown["links"]["mlflow_run"]  # the test shows a link to compare
    with client.stream("GET", f"/v1/jobs/{job_id}/events", headers=STREAM) as r:
        text = "".join(r.iter_text())
    kinds = [
        line.removeprefix("event: ") for line in text.splitlines() if line.startswith("event:")
    ]
    assert kinds.index("progress") < len(kinds) - 2 and kinds[-2:] == ["status", "end"]
    end = json.loads(text.split("event: end\ndata: ", 1)[1].split("\n", 1)[0])
    assert end["links"] == shown["links"]
    assert end["mlflow_run_id"] == shown["mlflow_run_id"] == "r1"
