"""``gradq serve`` as a user runs it (local Ray with 2 CPUs, MLflow's SQLite store, no UI),
driven over HTTP and with ``gradq submit --watch``."""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from gradq_service import Service, running, service_env
from mlflow import MlflowClient

pytestmark = pytest.mark.slow

SMALL = {"name": "iris-small", "dataset": "iris", "model": {"hidden": [8]},
         "optimizer": {"epochs": 8, "lr": 0.05}}  # fmt: skip
LONG = {"name": "long", "dataset": "digits", "model": {"hidden": [32]},
        "optimizer": {"epochs": 5000}, "regularization": {"early_stopping": {"enabled": False}}}  # fmt: skip


@pytest.fixture(scope="module")
def service(folder: Path) -> Iterator[Service]:
    with running(["serve", "--no-mlflow-ui"], folder, service_env(folder)) as s:
        yield s


@pytest.fixture(scope="module")
def watched(service: Service) -> dict[str, Any]:
    """A job submitted with ``gradq submit --watch``, followed to its end."""
    job_file = service.folder / "job.yaml"
    job_file.write_text(json.dumps(SMALL))
    done = service.gradq("submit", str(job_file), "--watch")
    assert done.returncode == 0, done.stderr + done.stdout + service.log_tail()
    job_id = done.stdout.splitlines()[0].strip()
    with service.client() as http:
        job = http.get(f"/v1/jobs/{job_id}").json()
    return {"stdout": done.stdout, "job": job}


def test_submit_watch_ends_with_metrics_and_the_mlflow_link(watched: dict[str, Any]) -> None:
    job, out = watched["job"], watched["stdout"]
    assert job["status"] == "succeeded"
    assert f"job {job['id']} succeeded" in out
    assert "test_accuracy" in out
    assert f"/runs/{job['mlflow_run_id']}" in out
    result = job["result"]  # how it ended and its best epoch, on one line
    line = f"{result['stopped']} after {result['epochs']} epochs, best epoch {result['best_epoch']}"
    assert f"{job['name']}: {line}\n" in out
    assert job["result"]["best_epoch"] >= 1
    assert 0.0 <= job["result"]["metrics"]["test_accuracy"] <= 1.0
    assert job["progress"]["epoch"] == job["result"]["epochs"]
    assert job["links"]["mlflow_run"].startswith("http://127.0.0.1:5000/#/experiments/")
    assert job["checkpoint_uri"] == f"runs:/{job['mlflow_run_id']}/checkpoints/last/checkpoint.pt"


def test_the_learning_curves_and_the_mlflow_run(service: Service, watched: dict[str, Any]) -> None:
    job = watched["job"]
    with service.client() as http:
        curves = http.get(f"/v1/jobs/{job['id']}/metrics").json()["metrics"]
        events = http.get(f"/v1/jobs/{job['id']}/events").json()
        for query, name in (("loss/val", "loss/val"), ("loss%2Fval", "loss/val"),
                            ("val_loss", "val_loss")):  # fmt: skip
            asked = http.get(f"/v1/jobs/{job['id']}/metrics?key={query}").json()["metrics"]
            assert asked == {name: curves["loss/val"]}, query
    steps = [p["step"] for p in curves["loss/train"]]
    assert steps == list(range(1, job["result"]["epochs"] + 1))
    assert all(isinstance(p["value"], float) for p in curves["accuracy/val"])
    assert [(e["from_status"], e["to_status"]) for e in events] == [
        (None, "queued"), ("queued", "running"), ("running", "succeeded")
    ]  # fmt: skip
    run = MlflowClient(service.env["GRADQ_MLFLOW_TRACKING_URI"]).get_run(job["mlflow_run_id"])
    assert run.info.status == "FINISHED"
    assert run.data.tags["gradq.job_id"] == job["id"]
    assert run.data.params["model.hidden"] == "[8]"


def test_the_runs_files_through_the_api(service: Service, watched: dict[str, Any]) -> None:
    """A succeeded job's checkpoints, curve picture and model files come through gradq's
    API, byte for byte as MLflow holds them."""
    job = watched["job"]
    assert job["links"]["artifacts"] == f"/v1/jobs/{job['id']}/artifacts"
    with service.client() as http:
        listed = http.get(job["links"]["artifacts"]).json()["artifacts"]
        paths = {a["path"]: a for a in listed}
        assert {"checkpoints/last/checkpoint.pt", "checkpoints/best/checkpoint.pt",
                "plots/learning_curve.png", "model/MLmodel"} <= set(paths)  # fmt: skip
        png = http.get(paths["plots/learning_curve.png"]["url"])
        mlmodel = http.get(paths["model/MLmodel"]["url"])
    assert png.content.startswith(b"\x89PNG")
    assert len(png.content) == paths["plots/learning_curve.png"]["size"]
    model_id = (
        MlflowClient(service.env["GRADQ_MLFLOW_TRACKING_URI"])
        .get_run(job["mlflow_run_id"])
        .data.tags["gradq.model_uri"]
        .removeprefix("models:/")
    )
    assert f"model_id: {model_id}" in mlmodel.text


def test_gradq_predict_answers_what_the_logged_model_computes(
    service: Service, watched: dict[str, Any]
) -> None:
    """``gradq predict JOB rows.csv`` on the job's own test split: the classes and
    probabilities of the model the run logged to MLflow, as JSON, a table or CSV; a file
    with a column the model does not know is refused naming it."""
    import csv

    import mlflow.pytorch
    import numpy as np
    import torch

    from core.data import load_dataset
    from core.spec import parse_spec

    job = watched["job"]
    spec = parse_spec(SMALL)
    data = load_dataset(spec.dataset, seed=spec.seed)
    raw = data.raw(data.X_test)
    rows = service.folder / "rows.csv"
    with rows.open("w", newline="") as f:
        csv.writer(f).writerows([data.feature_names, *raw.tolist()])
    uri = f"runs:/{job['mlflow_run_id']}/model"
    mlflow.set_tracking_uri(service.env["GRADQ_MLFLOW_TRACKING_URI"])
    try:
        model = mlflow.pytorch.load_model(uri)
    finally:
        mlflow.set_tracking_uri(None)  # type: ignore[arg-type]  # None unsets it
    with torch.no_grad():
        logged = model(torch.as_tensor(raw, dtype=torch.float32)).numpy()
    labels = [data.classes[i] for i in logged.argmax(1)]

    done = service.gradq("predict", job["id"], str(rows), "--json")
    assert done.returncode == 0, done.stderr
    answer = json.loads(done.stdout)
    assert (answer["classes"], answer["predictions"]) == (data.classes, labels)
    np.testing.assert_allclose(answer["probabilities"], logged, rtol=1e-5, atol=1e-6)
    table = service.gradq("predict", job["id"], str(rows), columns=120)
    assert table.returncode == 0, table.stderr
    shown = [line.split("│")[1:3] for line in table.stdout.splitlines() if "│" in line]
    assert [(r.strip(), p.strip()) for r, p in shown] == [
        (str(i + 1), label) for i, label in enumerate(labels)
    ]
    as_csv = service.gradq("predict", job["id"], str(rows), "--csv").stdout.splitlines()
    assert as_csv[0] == "prediction," + ",".join(f"p_{c}" for c in data.classes)
    assert [line.split(",")[0] for line in as_csv[1:]] == labels

    bad = service.folder / "bad.csv"
    bad.write_text("petal width,sepal length (cm)\n1,2\n")
    refused = service.gradq("predict", job["id"], str(bad))
    assert refused.returncode == 1
    assert "HTTP 422 invalid at file: header row: unknown column 'petal width'" in (
        " ".join(refused.stderr.split())
    )


def test_cancel_running_and_queued_jobs(service: Service) -> None:
    with service.client() as http:
        long = http.post("/v1/jobs", json=LONG).json()
        service.wait_job(long["id"], ("running",))
        big = http.post("/v1/jobs", json={**SMALL, "resources": {"cpus": 2}}).json()
        deadline = time.monotonic() + 30
        while (waiting := http.get(f"/v1/jobs/{big['id']}").json())["status"] == "queued":
            if "waiting for resources" in (waiting["pending_reason"] or ""):
                break
            assert time.monotonic() < deadline, waiting
            time.sleep(0.2)
        assert waiting["status"] == "queued"
        assert "needs 2 CPU" in waiting["pending_reason"]
        cancelled = http.post(f"/v1/jobs/{big['id']}/cancel")
        assert (cancelled.status_code, cancelled.json()["status"]) == (202, "cancelled")
        r = http.post(f"/v1/jobs/{long['id']}/cancel")
        assert r.status_code == 202
        assert r.json()["cancel_requested"] is True
    final = service.wait_job(long["id"], ("cancelled", "failed", "succeeded"))
    assert final["status"] == "cancelled"
    with service.client() as http:
        again = http.post(f"/v1/jobs/{long['id']}/cancel")
    assert (again.status_code, again.json()["status"]) == (202, "cancelled")


def test_idempotency(service: Service) -> None:
    with service.client() as http:
        first = http.post("/v1/jobs", json=SMALL, headers={"Idempotency-Key": "same"})
        second = http.post("/v1/jobs", json=SMALL, headers={"Idempotency-Key": "same"})
        other = http.post(
            "/v1/jobs", json={**SMALL, "seed": 1}, headers={"Idempotency-Key": "same"}
        )
        assert (first.status_code, second.status_code) == (201, 200)
        assert second.json()["id"] == first.json()["id"]
        assert (other.status_code, other.json()["error"]["code"]) == (409, "idempotency_conflict")
        http.post(f"/v1/jobs/{first.json()['id']}/cancel")


def test_bad_inputs(service: Service, watched: dict[str, Any]) -> None:
    with service.client() as http:
        r = http.post("/v1/jobs", json={"dataset": "iris", "model": {"hidden": [8, 0]}})
        assert (r.status_code, r.json()["error"]["field"]) == (422, "model.hidden[1]")
        r = http.get("/v1/jobs/00000000-0000-0000-0000-000000000000")
        assert (r.status_code, r.json()["error"]["code"]) == (404, "not_found")
        r = http.post(
            "/v1/jobs", content=b'{"dataset": "iris", "name": "' + b"x" * 2_000_000 + b'"}'
        )
        assert (r.status_code, r.json()["error"]["code"]) == (413, "payload_too_large")
        r = http.post(
            "/v1/jobs", content=b'{"dataset": ', headers={"content-type": "application/json"}
        )
        assert (r.status_code, r.json()["error"]["code"]) == (400, "malformed_json")
        bad_csv = b"a,b,y\n1,2,0\n3,oops,1\n"
        r = http.post("/v1/datasets", files={"file": ("bad.csv", bad_csv)}, data={"target": "y"})
        assert r.status_code == 422
        assert "row 3" in r.json()["error"]["message"] and "'b'" in r.json()["error"]["message"]
        r = http.post(
            "/v1/datasets", files={"file": ("t.csv", b"a,b\n1,2\n")}, data={"target": "y"}
        )
        assert (r.status_code, r.json()["error"]["field"]) == (422, "target")
        r = http.post(f"/v1/jobs/{watched['job']['id']}/cancel")
        assert (r.status_code, r.json()["error"]["code"]) == (409, "job_succeeded")
        spec = {"dataset": {"name": "upload", "id": "nope", "target": "y"}}
        r = http.post("/v1/jobs", json=spec)
        assert (r.status_code, r.json()["error"]["field"]) == (422, "dataset.id")


def test_upload_a_csv_and_train_on_it_streaming_events(service: Service) -> None:
    rows = ["x1,x2,label"] + [f"{i % 7},{(i * 3) % 5},{'ab'[i % 2]}" for i in range(60)]
    csv_file = service.folder / "points.csv"
    csv_file.write_text("\n".join(rows) + "\n")
    up = service.gradq("datasets", "upload", str(csv_file), "--target", "label")
    assert up.returncode == 0, up.stderr
    dataset_id = up.stdout.strip()
    listed = service.gradq("datasets", "list", columns=80)
    assert listed.returncode == 0 and dataset_id in listed.stdout, listed  # the id whole
    with service.client() as http:
        ds = http.get(f"/v1/datasets/{dataset_id}").json()
        assert (ds["rows"], ds["columns"], ds["uri"][:6]) == (60, ["x1", "x2", "label"], "runs:/")
        assert [d["id"] for d in http.get("/v1/datasets").json()["items"]] == [dataset_id]
        spec = {"name": "on-upload", "dataset": {"name": "upload", "id": dataset_id,
                "target": "label"}, "optimizer": {"epochs": 3}}  # fmt: skip
        job = http.post("/v1/jobs", json=spec).json()
        kinds, statuses, end = _stream(http, job["id"])
    assert end["status"] == "succeeded", end
    assert statuses[-1] == "succeeded" and "running" in statuses
    assert "progress" in kinds
    assert end["result"]["epochs"] == 3


def _stream(http: httpx.Client, job_id: str) -> tuple[set[str], list[str], dict[str, Any]]:
    kinds: set[str] = set()
    statuses: list[str] = []
    headers = {"Accept": "text/event-stream"}
    with http.stream("GET", f"/v1/jobs/{job_id}/events", headers=headers, timeout=180) as r:
        assert r.headers["content-type"].startswith("text/event-stream")
        kind = None
        for line in r.iter_lines():
            if line.startswith("event: "):
                kind = line.removeprefix("event: ")
                kinds.add(kind)
            elif line.startswith("data: ") and kind is not None:
                data = json.loads(line.removeprefix("data: "))
                if kind == "status":
                    statuses.append(data["to_status"])
                if kind == "end":
                    return kinds, statuses, data
    raise AssertionError(f"the stream ended without an end event: {kinds} {statuses}")


def test_gradcheck_health_and_metrics(service: Service, watched: dict[str, Any]) -> None:
    with service.client() as http:
        report = http.post(
            "/v1/gradcheck", json={"dataset": "iris", "model": {"hidden": [5]}}
        ).json()
        assert report["passed"] is True
        assert [t["name"] for t in report["tensors"]] == ["W1", "b1", "W2", "b2"]
        assert report["parameters"] == 4 * 5 + 5 + 5 * 3 + 3
        r = http.post("/v1/gradcheck", json={"dataset": "digits", "model": {"hidden": [512, 512]}})
        assert (r.status_code, r.json()["error"]["field"]) == (422, "model.hidden")
        ready = http.get("/readyz")
        assert ready.status_code == 200
        assert set(ready.json()["checks"]) == {"database", "ray", "mlflow"}
        assert "local Ray with 2 CPU" in ready.json()["checks"]["ray"]["detail"]
        text = http.get("/metrics").text
        assert 'gradq_jobs{status="succeeded"}' in text
        assert "gradq_queue_depth " in text and "gradq_claim_latency_seconds_count" in text
        succeeded = int(text.split('gradq_jobs{status="succeeded"} ')[1].split()[0])
        assert succeeded >= 1
        assert http.get("/healthz").json() == {"status": "ok"}
