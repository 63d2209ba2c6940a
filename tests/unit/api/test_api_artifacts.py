"""``/v1/jobs/{id}/artifacts``: a job's files (checkpoints, gradient-check reports, the
learning-curve picture, the model's files) read from its run in a real MLflow SQLite store,
under the caller's key, and only paths inside the job's run."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest
from fastapi.testclient import TestClient
from mlflow import MlflowClient

from db.keys import KeyStore
from db.session import make_engine

IRIS = {"dataset": "iris", "model": {"hidden": [8]}, "optimizer": {"epochs": 3}}
FILES = {
    "checkpoints/last/checkpoint.pt": b"\x80\x02last",
    "checkpoints/best/checkpoint.pt": b"\x80\x02best",
    "gradcheck/step_00000001.json": b'{"max_rel_error": 1e-9}',
    "plots/learning_curve.png": b"\x89PNG\r\n\x1a\nfake",
}
MODEL_FILES = {"MLmodel": b"flavors: {}\n", "data/model.pth": b"weights"}


def write(folder: Path, files: dict[str, bytes]) -> Path:
    for name, data in files.items():
        (folder / name).parent.mkdir(parents=True, exist_ok=True)
        (folder / name).write_bytes(data)
    return folder


def run_with_artifacts(tmp_path: Path, files: dict[str, bytes], *, model: bool) -> tuple[str, str]:
    """(run id, experiment id) of a run of the app's MLflow store that holds ``files`` and,
    with ``model``, a logged model with ``MODEL_FILES`` named by the run's ``gradq.model_uri``
    tag (as the tracker leaves a succeeded job's run)."""
    client = MlflowClient(tracking_uri=f"sqlite:///{tmp_path}/mlflow.db")
    experiment = client.get_experiment_by_name("jobs")
    experiment_id = (
        experiment.experiment_id
        if experiment
        else client.create_experiment("jobs", artifact_location=str(tmp_path / "artifacts"))
    )
    run_id = client.create_run(experiment_id).info.run_id
    source = tmp_path / f"src-{run_id}"
    write(source, files)
    for name in files:
        folder = str(Path(name).parent)
        client.log_artifact(run_id, str(source / name), None if folder == "." else folder)
    if model:
        logged = client.create_logged_model(experiment_id, name="model", source_run_id=run_id)
        client.log_model_artifacts(logged.model_id, str(write(tmp_path / "m", MODEL_FILES)))
        client.set_tag(run_id, "gradq.model_uri", f"models:/{logged.model_id}")
    return run_id, experiment_id


def test_a_job_lists_and_serves_its_runs_files(
    make_client: Callable[..., TestClient], running_job: Callable[..., str], tmp_path: Path
) -> None:
    client = make_client()
    run_id, experiment_id = run_with_artifacts(tmp_path, FILES, model=True)
    job_id = running_job(run_id=run_id, experiment_id=experiment_id, tenant="default")
    every = {**FILES, **{f"model/{k}": v for k, v in MODEL_FILES.items()}}

    r = client.get(f"/v1/jobs/{job_id}/artifacts")
    assert r.status_code == 200, r.text
    listed = r.json()["artifacts"]
    assert [a["path"] for a in listed] == sorted(every)
    assert {a["path"]: a["size"] for a in listed} == {k: len(v) for k, v in every.items()}
    for a in listed:
        got = client.get(a["url"])
        assert (got.status_code, got.content) == (200, every[a["path"]]), a["path"]
    png = client.get(f"/v1/jobs/{job_id}/artifacts/plots/learning_curve.png")
    assert png.headers["content-type"] == "image/png"
    assert png.headers["content-disposition"].startswith("inline")
    assert client.get(f"/v1/jobs/{job_id}").json()["links"]["artifacts"] == (
        f"/v1/jobs/{job_id}/artifacts"
    )


def test_a_job_before_its_run_has_no_files(client: TestClient) -> None:
    job_id = client.post("/v1/jobs", json=IRIS).json()["id"]
    assert client.get(f"/v1/jobs/{job_id}/artifacts").json() == {"job_id": job_id, "artifacts": []}
    r = client.get(f"/v1/jobs/{job_id}/artifacts/plots/learning_curve.png")
    assert (r.status_code, r.json()["error"]["field"]) == (404, "path")


def test_paths_stay_inside_the_jobs_run(
    make_client: Callable[..., TestClient], running_job: Callable[..., str], tmp_path: Path
) -> None:
    client = make_client()
    run_id, experiment_id = run_with_artifacts(tmp_path, FILES, model=False)
    job_id = running_job(run_id=run_id, experiment_id=experiment_id, tenant="default")
    other_run, _ = run_with_artifacts(tmp_path, {"secret/data.csv": b"a,b\n1,2\n"}, model=False)
    base = f"/v1/jobs/{job_id}/artifacts"
    for path in (
        "..%2F" + other_run + "%2Fartifacts%2Fsecret%2Fdata.csv",
        "%2E%2E/%2E%2E/mlflow.db",
        "plots/%2E%2E/%2E%2E/%2E%2E/mlflow.db",
        "%2Fetc%2Fpasswd",
        "plots//learning_curve.png",
        "plots%5Clearning_curve.png",
    ):
        r = client.get(f"{base}/{path}")
        assert (r.status_code, r.json()["error"]["field"]) == (422, "path"), path
    for path in ("secret/data.csv", "plots", "checkpoints/last", "model/MLmodel", "nope.txt"):
        r = client.get(f"{base}/{path}")
        assert (r.status_code, r.json()["error"]["field"]) == (404, "path"), path
        assert b"a,b" not in r.content


def test_another_tenants_job_is_not_found(
    make_client: Callable[..., TestClient], running_job: Callable[..., str], tmp_path: Path
) -> None:
    keys = KeyStore(make_engine(f"sqlite:///{tmp_path}/gradq.db"))
    a = {"Authorization": f"Bearer {keys.create(tenant='a')[1]}"}
    b = {"Authorization": f"Bearer {keys.create(tenant='b')[1]}"}
    client = make_client(auth="keys")
    run_id, experiment_id = run_with_artifacts(tmp_path, FILES, model=False)
    job_id = running_job(run_id=run_id, experiment_id=experiment_id, tenant="a")
    url = f"/v1/jobs/{job_id}/artifacts"
    assert len(client.get(url, headers=a).json()["artifacts"]) == len(FILES)
    assert (
        client.get(f"{url}/plots/learning_curve.png", headers=a).content
        == FILES["plots/learning_curve.png"]
    )
    for path in (url, f"{url}/plots/learning_curve.png"):
        r = client.get(path, headers=b)
        assert (r.status_code, r.json()["error"]["code"]) == (404, "not_found"), path
        assert b"PNG" not in r.content
        assert client.get(path).status_code == 401


@pytest.mark.parametrize("auth", ["none", "keys"])
def test_mlflow_link_is_for_operators_only(
    make_client: Callable[..., TestClient],
    running_job: Callable[..., str],
    tmp_path: Path,
    auth: str,
) -> None:
    """With keys, a tenant's job view links gradq's own routes (metrics, artifacts), never
    the MLflow UI; without keys the MLflow link stays."""
    keys = KeyStore(make_engine(f"sqlite:///{tmp_path}/gradq.db"))
    headers = {"Authorization": f"Bearer {keys.create(tenant='default')[1]}"}
    client = make_client(auth=auth, mlflow_ui_url="https://mlflow.example.org/")
    run_id, experiment_id = run_with_artifacts(tmp_path, FILES, model=False)
    job_id = running_job(run_id=run_id, experiment_id=experiment_id)
    mlflow = f"https://mlflow.example.org/#/experiments/{experiment_id}/runs/{run_id}"
    views = [
        client.get(f"/v1/jobs/{job_id}", headers=headers).json(),
        client.post(f"/v1/jobs/{job_id}/cancel", headers=headers).json(),
        client.post("/v1/jobs", json=IRIS, headers=headers).json(),
    ]
    for view in views:
        links = view["links"]
        assert links["artifacts"] == f"/v1/jobs/{view['id']}/artifacts"
        assert links["metrics"] == f"/v1/jobs/{view['id']}/metrics"
    shown = views[0]["links"]["mlflow_run"], views[1]["links"]["mlflow_run"]
    if auth == "keys":
        assert shown == (None, None)
    else:
        assert [link.startswith(mlflow) for link in shown] == [True, True]
