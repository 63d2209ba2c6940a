"""``DELETE /v1/jobs/{id}`` refusals, on the app with a real SQLite queue and MLflow store (the
bytes it frees: tests/integration/workers/test_retention.py)."""

from __future__ import annotations

from pathlib import Path

from fastapi.testclient import TestClient

from core.spec import parse_spec
from db.session import make_engine
from db.store import JobStore

IRIS = {"dataset": "iris", "model": {"hidden": [8]}, "optimizer": {"epochs": 3}}
TRIAL = {"sweep_id": "s-1", "number": 0, "metric": "val_loss", "mode": "min"}


def finished(store: JobStore, spec: dict) -> str:
    job = store.submit(spec=parse_spec(spec))
    store.claim(owner="w", lease_seconds=30, ids=[job.id])
    store.finish(job_id=job.id, attempt=1, status="failed", error={"type": "x", "message": "x"})
    return job.id


def test_a_running_job_and_a_trial_are_refused_and_kept(client: TestClient, tmp_path: Path) -> None:
    store = JobStore(make_engine(f"sqlite:///{tmp_path}/gradq.db"))
    running = store.submit(spec=parse_spec(IRIS)).id
    store.claim(owner="w", lease_seconds=30, ids=[running])
    trial = finished(store, {**IRIS, "trial": TRIAL})
    plain = finished(store, IRIS)  # it never had a run: nothing to free in MLflow
    r = client.delete(f"/v1/jobs/{running}")
    assert (r.status_code, r.json()["error"]["code"]) == (409, "job_not_finished")
    assert f"POST /v1/jobs/{running}/cancel" in r.json()["error"]["message"]
    r = client.delete(f"/v1/jobs/{trial}")
    assert (r.status_code, r.json()["error"]["code"]) == (409, "job_is_a_trial")
    assert "sweep s-1" in r.json()["error"]["message"]
    assert client.get(f"/v1/jobs/{running}").status_code == 200
    assert client.get(f"/v1/jobs/{trial}").status_code == 200
    gone = client.delete(f"/v1/jobs/{plain}")
    assert gone.json() == {"id": plain, "mlflow_run_id": None, "freed_files": 0, "freed_bytes": 0}
    assert client.get(f"/v1/jobs/{plain}").status_code == 404
    assert client.delete(f"/v1/jobs/{plain[:8]}").status_code == 404  # whole ids only
