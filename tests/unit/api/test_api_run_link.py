"""The MLflow link of a job (``links.mlflow_run``) is built from the run and experiment ids
its attempt stored and the API's ``GRADQ_MLFLOW_UI_URL``: no call to MLflow. Only a job
whose run was stored before migration 0004 (no experiment id) asks MLflow, as before."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from fastapi.testclient import TestClient

IRIS = {"dataset": "iris", "model": {"hidden": [8]}, "optimizer": {"epochs": 3}}
RUN = "0123456789abcdef0123456789abcdef"


class SilentTracking:
    """A tracking read interface that must not be used: every use is recorded and fails."""

    def __init__(self, legacy_link: str | None = None) -> None:
        self.used: list[str] = []
        self.legacy_link = legacy_link

    def run_link(self, run_id: str) -> str | None:
        self.used.append(f"run_link({run_id})")
        if self.legacy_link is None:
            raise AssertionError("the API asked MLflow for a run's link")
        return self.legacy_link

    def __getattr__(self, name: str) -> Any:
        self.used.append(name)
        raise AssertionError(f"the API used tracking.{name}")


def test_get_job_builds_the_link_without_mlflow(
    make_client: Callable[..., TestClient], running_job: Callable[..., str]
) -> None:
    client = make_client(mlflow_ui_url="https://mlflow.example.org/ui/")
    tracking = SilentTracking()
    client.app.state.services.tracking = tracking  # type: ignore[attr-defined]
    job_id = running_job(run_id=RUN, experiment_id="42", key="k")
    link = f"https://mlflow.example.org/ui/#/experiments/42/runs/{RUN}/model-metrics"

    r = client.get(f"/v1/jobs/{job_id}")
    assert r.status_code == 200, r.text
    assert (r.json()["mlflow_run_id"], r.json()["links"]["mlflow_run"]) == (RUN, link)
    replay = client.post("/v1/jobs", json=IRIS, headers={"Idempotency-Key": "k"})
    assert (replay.status_code, replay.json()["links"]["mlflow_run"]) == (200, link)
    cancel = client.post(f"/v1/jobs/{job_id}/cancel")
    assert (cancel.status_code, cancel.json()["links"]["mlflow_run"]) == (202, link)
    assert tracking.used == []


def test_a_job_stored_before_the_experiment_id_still_gets_its_link_from_mlflow(
    make_client: Callable[..., TestClient], running_job: Callable[..., str]
) -> None:
    client = make_client()
    tracking = SilentTracking(legacy_link="http://127.0.0.1:5000/#/experiments/3/runs/x")
    client.app.state.services.tracking = tracking  # type: ignore[attr-defined]
    job_id = running_job(run_id=RUN, experiment_id=None)
    r = client.get(f"/v1/jobs/{job_id}")
    assert r.json()["links"]["mlflow_run"] == tracking.legacy_link
    assert tracking.used == [f"run_link({RUN})"]


def test_a_job_without_a_run_has_no_link_and_asks_nothing(
    make_client: Callable[..., TestClient],
) -> None:
    client = make_client()
    tracking = SilentTracking()
    client.app.state.services.tracking = tracking  # type: ignore[attr-defined]
    job_id = client.post("/v1/jobs", json=IRIS).json()["id"]
    assert client.get(f"/v1/jobs/{job_id}").json()["links"]["mlflow_run"] is None
    assert tracking.used == []
