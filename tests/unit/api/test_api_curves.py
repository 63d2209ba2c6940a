"""``GET /v1/jobs/{id}/metrics``: curves named by their MLflow keys (``loss/val``), also for a
run logged under the former flat names (``val_loss``: a job tracked before the keys changed);
``key`` takes either name, in any form a URL may carry it (``loss/val``, ``loss%2Fval``)."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest
from fastapi.testclient import TestClient
from mlflow import MlflowClient

LOSS = [0.9, 0.6, 0.4]


def logged_run(tmp_path: Path, names: dict[str, str]) -> tuple[str, str]:
    """(run id, experiment id) of a run of the app's MLflow store in which each flat name of
    ``names`` was logged under its value: three epochs of losses, and a final accuracy."""
    client = MlflowClient(tracking_uri=f"sqlite:///{tmp_path}/mlflow.db")
    experiment = client.get_experiment_by_name("curves")
    experiment_id = experiment.experiment_id if experiment else client.create_experiment("curves")
    run_id = client.create_run(experiment_id).info.run_id
    for epoch, loss in enumerate(LOSS, start=1):
        client.log_metric(run_id, names["val_loss"], loss, step=epoch)
        client.log_metric(run_id, names["train_loss"], loss / 2, step=epoch)
    client.log_metric(run_id, "final_test_accuracy", 0.9, step=0)
    return run_id, experiment_id


def curve(values: list[float]) -> list[dict[str, object]]:
    return [{"step": s, "value": pytest.approx(v)} for s, v in enumerate(values, start=1)]


@pytest.mark.parametrize(
    "logged",
    [
        pytest.param({"val_loss": "loss/val", "train_loss": "loss/train"}, id="keys"),
        pytest.param({"val_loss": "val_loss", "train_loss": "train_loss"}, id="former-names"),
    ],
)
def test_curves_by_key_or_former_name(
    make_client: Callable[..., TestClient],
    running_job: Callable[..., str],
    tmp_path: Path,
    logged: dict[str, str],
) -> None:
    client = make_client()
    run_id, experiment_id = logged_run(tmp_path, logged)
    job_id = running_job(run_id=run_id, experiment_id=experiment_id)
    url = f"/v1/jobs/{job_id}/metrics"

    every = client.get(url).json()["metrics"]
    assert sorted(every) == ["final_test_accuracy", "loss/train", "loss/val"]
    assert every["loss/val"] == curve(LOSS)
    assert every["loss/train"] == curve([v / 2 for v in LOSS])

    for query in ("key=loss/val", "key=loss%2Fval", "key=val_loss"):
        asked = query.removeprefix("key=").replace("%2F", "/")
        r = client.get(f"{url}?{query}")
        assert r.status_code == 200, r.text
        assert r.json()["metrics"] == {asked: curve(LOSS)}, query
    both = client.get(url, params=[("key", "train_loss"), ("key", "loss/val")]).json()
    assert both["metrics"] == {"train_loss": curve([v / 2 for v in LOSS]), "loss/val": curve(LOSS)}
    assert client.get(url, params={"key": "accuracy/val"}).json()["metrics"] == {"accuracy/val": []}
