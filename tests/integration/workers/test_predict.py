"""Predictions of a job trained by a real attempt (``run_attempt``: the worker's code, the
job database on SQLite and on PostgreSQL, a real MLflow SQLite store), served by the API
app over the same stores: on the test split they equal the output of the model the run
logged to MLflow (``mlflow.pytorch.load_model``, the exported torch model) for the best
weights, and core's forward with the run's last checkpoint for ``?checkpoint=last``, which
the checkpoint's own ``predictors.npz`` (what a job in training answers from) also gives."""

from __future__ import annotations

import tempfile
from pathlib import Path
from typing import Any

import mlflow
import mlflow.artifacts
import mlflow.pytorch
import numpy as np
import pytest
import torch
from fastapi.testclient import TestClient

from api.main import create_app
from api.settings import Settings
from core.checkpoint import Checkpoint
from core.data import load_dataset
from core.model import forward
from core.predictor import load_predictor
from core.spec import parse_spec
from db.migrate import upgrade
from db.session import make_engine
from db.store import JobStore
from workers.task import WorkerConfig, run_attempt

pytestmark = pytest.mark.slow

# a high rate: the loss wanders, so the best epoch (restored) is not the last
SPEC: dict[str, Any] = {
    "name": "iris",
    "dataset": "iris",
    "model": {"hidden": [8]},
    "optimizer": {"epochs": 12, "lr": 0.8},
    "regularization": {"early_stopping": {"patience": 50}},
}


@pytest.fixture(params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
def db_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    url = f"sqlite:///{tmp_path}/gradq.db"
    if request.param == "postgres":
        url = request.getfixturevalue("pg_url")
    upgrade(url)
    return url


def test_predictions_equal_the_logged_models_and_the_last_checkpoints(
    db_url: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    tracking_uri = f"sqlite:///{tmp_path}/mlflow.db"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", tracking_uri)  # for mlflow.pytorch.load_model
    config = WorkerConfig(
        database_url=db_url, tracking_uri=tracking_uri, artifact_root=str(tmp_path / "artifacts")
    )
    engine = make_engine(db_url)
    store = JobStore(engine)
    spec = parse_spec(SPEC)
    job_id = store.submit(spec=spec).id
    [claimed] = store.claim(owner="test", limit=1, ids=[job_id], lease_seconds=30)
    assert run_attempt(config, claimed) == "succeeded"
    job = store.get(job_id=job_id)
    engine.dispose()
    assert job.result is not None and job.mlflow_run_id is not None
    assert job.result["best_epoch"] < job.result["epochs"] == 12  # best and last differ

    data = load_dataset(spec.dataset, seed=spec.seed)  # the split the job trained on
    raw = data.raw(data.X_test)
    mlflow.set_tracking_uri(tracking_uri)  # over one another test may have left set
    try:
        model = mlflow.pytorch.load_model(f"runs:/{job.mlflow_run_id}/model")
    finally:
        mlflow.set_tracking_uri(None)  # type: ignore[arg-type]  # None unsets it
    with torch.no_grad():
        logged = model(torch.as_tensor(raw, dtype=torch.float32)).numpy()
    with tempfile.TemporaryDirectory() as tmp:
        local = mlflow.artifacts.download_artifacts(
            run_id=job.mlflow_run_id, artifact_path="checkpoints/last/checkpoint.pt",
            dst_path=tmp, tracking_uri=tracking_uri,
        )  # fmt: skip
        last = Checkpoint.load(local)
    assert last.epoch == 12
    x = torch.as_tensor((raw - data.mean) / data.scale, dtype=torch.float32)
    with torch.no_grad():
        last_out = torch.softmax(forward(last.params[0::2], last.params[1::2], x,
                                         activation="relu"), dim=1).numpy()  # fmt: skip
    assert not np.allclose(logged, last_out, atol=1e-3)
    with tempfile.TemporaryDirectory() as tmp:  # the checkpoint's own, for a job in training
        local = mlflow.artifacts.download_artifacts(
            run_id=job.mlflow_run_id, artifact_path="checkpoints/last/predictors.npz",
            dst_path=tmp, tracking_uri=tracking_uri,
        )  # fmt: skip
        beside = load_predictor(Path(local).read_bytes(), "weights")
    np.testing.assert_allclose(beside.outputs(raw), last_out, rtol=1e-5, atol=1e-6)

    settings = Settings(database_url=db_url, mlflow_tracking_uri=tracking_uri,
                        allowed_hosts="testserver")  # fmt: skip
    with TestClient(create_app(settings)) as client:
        url = f"/v1/jobs/{job_id}/predict"
        best = client.post(url, json={"rows": raw.tolist()})
        final = client.post(f"{url}?checkpoint=last", json={"rows": raw.tolist()})
    assert best.status_code == 200, best.text
    assert final.status_code == 200, final.text
    np.testing.assert_allclose(best.json()["probabilities"], logged, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(final.json()["probabilities"], last_out, rtol=1e-5, atol=1e-6)
    classes = best.json()["classes"]
    assert classes == data.classes
    assert best.json()["predictions"] == [classes[i] for i in logged.argmax(1)]
    assert final.json()["predictions"] == [classes[i] for i in last_out.argmax(1)]
    accuracy = np.mean(np.array(best.json()["predictions"]) == np.array(classes)[data.y_test])
    assert accuracy == pytest.approx(job.result["metrics"]["test_accuracy"])
