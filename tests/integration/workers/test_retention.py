"""Deleting a job and the retention policy free its bytes in a real MLflow file store: jobs
trained for real (``run_attempt`` in this process, the queue on SQLite and PostgreSQL, MLflow
on a SQLite store with its artifacts in a folder), then ``DELETE /v1/jobs/{id}`` through the
app and ``gradq gc``; the folder's size is measured before and after."""

from __future__ import annotations

import os
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path

import pytest
from fastapi.testclient import TestClient
from mlflow import MlflowClient
from sqlalchemy import update
from typer.testing import CliRunner

from api.cli import app as cli
from api.main import create_app
from api.settings import Settings
from core.spec import parse_spec
from db.keys import KeyStore
from db.migrate import upgrade
from db.models import JOBS, utcnow
from db.session import make_engine
from db.store import JobStore
from workers.task import WorkerConfig, run_attempt

BACKENDS = ["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)]
SPEC = {"name": "kept", "dataset": "iris", "model": {"hidden": [8]},
        "optimizer": {"epochs": 3, "batch_size": 16}}  # fmt: skip


@dataclass
class Service:
    store: JobStore
    config: WorkerConfig
    artifacts: Path
    db_url: str
    tracking_uri: str

    def trained(self, tenant: str = "a", register_as: str | None = None) -> str:
        """A job of ``tenant`` trained to its end (succeeded, its model logged and, with
        ``register_as``, registered)."""
        spec = {**SPEC, "register_as": register_as} if register_as else SPEC
        job = self.store.submit(spec=parse_spec(spec), tenant=tenant)
        [claimed] = self.store.claim(owner="test", lease_seconds=60, ids=[job.id])
        assert run_attempt(self.config, claimed) == "succeeded"
        return job.id

    def run_folder(self, job_id: str) -> Path:
        run = MlflowClient(self.tracking_uri).get_run(self.store.get(job_id=job_id).mlflow_run_id)
        return Path(run.info.artifact_uri.removeprefix("file://"))


@pytest.fixture(params=BACKENDS)
def service(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Service]:
    db_url = (
        request.getfixturevalue("pg_url")
        if request.param == "postgres"
        else f"sqlite:///{tmp_path}/gradq.db"
    )
    upgrade(db_url)
    engine = make_engine(db_url)
    tracking = f"sqlite:///{tmp_path}/mlflow.db"
    config = WorkerConfig(database_url=db_url, tracking_uri=tracking,
                          artifact_root=str(tmp_path / "artifacts"), checkpoint_upload_seconds=0)  # fmt: skip
    yield Service(JobStore(engine), config, tmp_path / "artifacts", db_url, tracking)
    engine.dispose()


def size(folder: Path) -> int:
    """The bytes of every file under ``folder``."""
    return sum(
        (Path(root) / name).stat().st_size for root, _, names in os.walk(folder) for name in names
    )


def files(folder: Path) -> set[str]:
    return {str(Path(root, n).relative_to(folder)) for root, _, ns in os.walk(folder) for n in ns}


def logged_models(service: Service, job_id: str) -> list[Path]:
    """The folders of the models logged from the job's run."""
    client = MlflowClient(service.tracking_uri)
    run = client.get_run(service.store.get(job_id=job_id).mlflow_run_id)
    found = client.search_logged_models(experiment_ids=[run.info.experiment_id])
    return [Path(m.artifact_location.removeprefix("file://"))
            for m in found if m.source_run_id == run.info.run_id]  # fmt: skip


def test_delete_removes_the_run_its_bytes_and_the_job(service: Service, tmp_path: Path) -> None:
    deleted, kept = service.trained(register_as="deleted-model"), service.trained()
    queued = service.store.submit(spec=parse_spec(SPEC), tenant="a").id
    keys = KeyStore(service.store._engine)
    a = {"Authorization": f"Bearer {keys.create(tenant='a')[1]}"}
    b = {"Authorization": f"Bearer {keys.create(tenant='b')[1]}"}
    settings = Settings(database_url=service.db_url, mlflow_tracking_uri=service.tracking_uri,
                        mlflow_artifact_root=str(service.artifacts), auth="keys",
                        allowed_hosts="testserver")  # fmt: skip
    run_folder, kept_folder = service.run_folder(deleted), service.run_folder(kept)
    model_folders = logged_models(service, deleted)
    run_id = service.store.get(job_id=deleted).mlflow_run_id
    assert model_folders and size(run_folder) > 0
    assert all(size(folder) > 0 for folder in model_folders)
    before, kept_before = size(service.artifacts), files(kept_folder)

    with TestClient(create_app(settings)) as http:
        refused = http.delete(f"/v1/jobs/{deleted}", headers=b)  # another tenant's
        assert (refused.status_code, refused.json()["error"]["code"]) == (404, "not_found")
        busy = http.delete(f"/v1/jobs/{queued}", headers=a)
        assert (busy.status_code, busy.json()["error"]["code"]) == (409, "job_not_finished")
        assert "cancel it first" in busy.json()["error"]["message"]
        assert size(service.artifacts) == before
        gone = http.delete(f"/v1/jobs/{deleted}", headers=a)
        assert gone.status_code == 200, gone.text
        after = size(service.artifacts)
        assert gone.json()["freed_bytes"] == before - after > 0
        assert gone.json()["mlflow_run_id"] == run_id
        assert http.get(f"/v1/jobs/{deleted}", headers=a).status_code == 404
        listed = [j["id"] for j in http.get("/v1/jobs", headers=a).json()["items"]]
        assert deleted not in listed and kept in listed and queued in listed
        assert http.delete(f"/v1/jobs/{deleted}", headers=a).status_code == 404

    assert size(run_folder) == 0  # every byte of its run, not only marked deleted
    client = MlflowClient(service.tracking_uri)
    assert client.get_run(run_id).info.lifecycle_stage == "deleted"
    for folder in model_folders:
        assert size(folder) == 0
    assert client.search_model_versions("name = 'deleted-model'") == []
    assert files(kept_folder) == kept_before  # another job's run is untouched


def test_gc_dry_run_changes_nothing_and_apply_frees_the_expired(
    service: Service, monkeypatch: pytest.MonkeyPatch
) -> None:
    expired, recent = service.trained(), service.trained()
    registered = service.trained(register_as="registered")
    with service.store._engine.begin() as conn:
        conn.execute(update(JOBS).where(JOBS.c.id.in_([expired, registered]))
                     .values(finished_at=utcnow() - timedelta(days=40)))  # fmt: skip
    [kept_model] = logged_models(service, registered)
    kept_bytes = size(kept_model)
    monkeypatch.setenv("GRADQ_DATABASE_URL", service.db_url)
    monkeypatch.setenv("GRADQ_MLFLOW_TRACKING_URI", service.tracking_uri)
    monkeypatch.setenv("GRADQ_RETENTION_DAYS", "30")
    old, new = service.run_folder(expired), service.run_folder(recent)
    recent_files = files(new)
    before, listed = size(service.artifacts), files(service.artifacts)
    models = logged_models(service, expired)
    assert models and all(size(folder) > 0 for folder in models)

    dry = CliRunner().invoke(cli, ["gc"])
    assert dry.exit_code == 0, dry.output
    assert files(service.artifacts) == listed and size(service.artifacts) == before
    assert expired in dry.output and recent not in dry.output
    assert "would free" in dry.output and registered in dry.output

    done = CliRunner().invoke(cli, ["gc", "--apply"])
    assert done.exit_code == 0, done.output
    freed = before - size(service.artifacts)
    assert freed > 0 and f"freed {freed:,} bytes" in done.output
    assert f"would free {freed:,} bytes" in dry.output  # the dry run said what it would free
    left = files(old)  # the default policy keeps the last and best checkpoints, and what
    # predictions read: each checkpoint's predictors and the model's
    assert left == {
        f"checkpoints/{which}/{name}"
        for which in ("last", "best")
        for name in ("checkpoint.pt", "predictors.npz")
    } | {"predictors.npz"}
    assert all(size(folder) == 0 for folder in models)
    assert files(new) == recent_files  # a job within the policy keeps everything
    # a registered version's model stays whole, its run's other files go
    assert size(kept_model) == kept_bytes > 0
    assert MlflowClient(service.tracking_uri).search_model_versions("name = 'registered'")
    assert files(service.run_folder(registered)) == left
    assert service.store.get(job_id=expired).status.value == "succeeded"  # the job stays

    again = CliRunner().invoke(cli, ["gc", "--apply"])
    assert "freed 0 bytes in 0 files of 0 jobs" in again.output
