"""Tenants through MLflow: attempts run in this process (``run_attempt`` without Ray) against
the real job database (SQLite) and a real MLflow SQLite store, as a service with API keys
runs them (``WorkerConfig(tenant_names=True)``): each tenant's MLflow names are its own, and
what someone changed in MLflow behind gradq's back is not trained on."""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import mlflow
import mlflow.pytorch
import pytest
import torch
from mlflow import MlflowClient

from core.spec import parse_spec
from db.datasets import DatasetStore
from db.migrate import upgrade
from db.session import make_engine
from db.store import JobStore
from db.views import JobView
from workers.task import WorkerConfig, run_attempt
from workers.tracking.read import Tracking

pytestmark = pytest.mark.slow

SPEC: dict[str, Any] = {
    "name": "iris",
    "dataset": "iris",
    "model": {"hidden": [4]},
    "optimizer": {"epochs": 1},
}


@dataclass(frozen=True)
class Stores:
    jobs: JobStore
    datasets: DatasetStore
    config: WorkerConfig
    client: MlflowClient


@pytest.fixture(scope="module")
def stores(tmp_path_factory: pytest.TempPathFactory) -> Stores:
    folder = tmp_path_factory.mktemp("tenants")
    db_url = f"sqlite:///{folder}/gradq.db"
    upgrade(db_url)
    config = WorkerConfig(
        database_url=db_url,
        tracking_uri=f"sqlite:///{folder}/mlflow.db",
        artifact_root=str(folder / "artifacts"),
        tenant_names=True,
    )
    engine = make_engine(db_url)
    client = MlflowClient(config.tracking_uri)
    return Stores(JobStore(engine), DatasetStore(engine), config, client)


def attempt(stores: Stores, tenant: str, **spec: Any) -> JobView:
    """Submit for ``tenant``, claim and run one job here; the job after its attempt."""
    job_id = stores.jobs.submit(spec=parse_spec(SPEC | spec), tenant=tenant).id
    [claimed] = stores.jobs.claim(owner="test", limit=1, ids=[job_id], lease_seconds=30)
    run_attempt(stores.config, claimed)
    return stores.jobs.get(job_id=job_id)


def test_two_tenants_with_the_same_names_get_their_own_experiment_and_registered_model(
    stores: Stores,
) -> None:
    names = {"experiment": "shared", "register_as": "iris-mlp"}
    a, b = attempt(stores, "team-a", **names), attempt(stores, "team-b", **names)
    assert a.status.value == b.status.value == "succeeded"
    assert a.mlflow_experiment_id != b.mlflow_experiment_id
    for job, tenant in ((a, "team-a"), (b, "team-b")):
        assert job.mlflow_run_id is not None and job.mlflow_experiment_id is not None
        experiment = stores.client.get_experiment(job.mlflow_experiment_id)
        assert experiment.name == f"{tenant}.shared"
        [version] = stores.client.search_model_versions(f"run_id = '{job.mlflow_run_id}'")
        assert version.name == f"{tenant}.iris-mlp" and int(version.version) == 1
        assert job.spec["experiment"] == "shared" and job.spec["register_as"] == "iris-mlp"
        # the registered version loads, as the README says, with no unpickling allowed
        with pytest.MonkeyPatch.context() as env:
            env.setenv("MLFLOW_ALLOW_PICKLE_DESERIALIZATION", "false")
            mlflow.set_tracking_uri(stores.config.tracking_uri)
            try:
                model = mlflow.pytorch.load_model(f"models:/{tenant}.iris-mlp/1")
            finally:
                mlflow.set_tracking_uri(None)  # type: ignore[arg-type]
        assert tuple(model(torch.ones(2, 4)).shape) == (2, 3)
    # the names as the tenants gave them hold nothing
    assert stores.client.get_experiment_by_name("shared") is None
    assert stores.client.search_registered_models("name = 'iris-mlp'") == []


def test_a_name_holding_the_separator_cannot_reach_another_tenants_names(stores: Stores) -> None:
    # tenant "x" naming its experiment "y.z" and tenant "x.y" naming it "z" stay apart
    first = attempt(stores, "x", experiment="y.z", register_as="y.m")
    second = attempt(stores, "x.y", experiment="z", register_as="m")
    assert first.mlflow_experiment_id != second.mlflow_experiment_id
    names = {
        stores.client.get_experiment(job.mlflow_experiment_id).name  # type: ignore[arg-type]
        for job in (first, second)
    }
    assert names == {"x.y.z", "x%2Ey.z"}
    models = {m.name for m in stores.client.search_registered_models("name LIKE '%m'")}
    assert {"x.y.m", "x%2Ey.m"} <= models


def test_a_scoped_name_longer_than_mlflow_keeps_fails_the_job_naming_the_field(
    stores: Stores,
) -> None:
    job = attempt(stores, "t" * 60, experiment="n" * 200)
    assert job.status.value == "failed" and job.error is not None
    assert job.error["message"].startswith("experiment: ") and "at most 256" in job.error["message"]
    assert job.mlflow_run_id is None


def test_a_tenant_cannot_revive_another_tenants_deleted_experiment(stores: Stores) -> None:
    owner = attempt(stores, "owner", experiment="archive")
    assert owner.mlflow_experiment_id is not None
    stores.client.delete_experiment(owner.mlflow_experiment_id)
    other = attempt(stores, "other", experiment="archive")
    assert other.status.value == "succeeded"
    assert other.mlflow_experiment_id != owner.mlflow_experiment_id
    deleted = stores.client.get_experiment(owner.mlflow_experiment_id)
    assert deleted.lifecycle_stage == "deleted"
    # the owner's own next job brings its experiment back, as without keys
    again = attempt(stores, "owner", experiment="archive")
    assert again.mlflow_experiment_id == owner.mlflow_experiment_id
    assert stores.client.get_experiment(owner.mlflow_experiment_id).lifecycle_stage == "active"


def test_without_keys_names_stay_as_given(stores: Stores) -> None:
    config = WorkerConfig(
        database_url=stores.config.database_url,
        tracking_uri=stores.config.tracking_uri,
        artifact_root=stores.config.artifact_root,
    )
    job_id = stores.jobs.submit(spec=parse_spec(SPEC | {"experiment": "plain"})).id
    [claimed] = stores.jobs.claim(owner="test", limit=1, ids=[job_id], lease_seconds=30)
    run_attempt(config, claimed)
    job = stores.jobs.get(job_id=job_id)
    assert job.mlflow_experiment_id is not None
    assert stores.client.get_experiment(job.mlflow_experiment_id).name == "plain"


def upload(stores: Stores, data: bytes, tenant: str) -> str:
    """Store ``data`` as the API's upload route does (bytes in MLflow, sha256 in the store)."""
    tracking = Tracking(
        tracking_uri=stores.config.tracking_uri,
        artifact_root=stores.config.artifact_root,
        ui_url="http://127.0.0.1:5000",
    )
    uri = tracking.store_dataset(data=data, filename="d.csv", tenant=tenant, name="d")
    return stores.datasets.add(
        tenant=tenant, name="d", sha256=hashlib.sha256(data).hexdigest(), size=len(data),
        rows=data.count(b"\n") - 1, columns=["a", "b", "y"], target="y", uri=uri,
    ).id  # fmt: skip


def csv_rows(n: int, *, flip: bool = False) -> bytes:
    rows = [f"{i},{(i * 7) % 5},{(i % 2) ^ flip}" for i in range(n)]
    return ("a,b,y\n" + "\n".join(rows) + "\n").encode()


def test_a_data_set_replaced_in_mlflow_fails_the_job_once_and_is_not_trained_on(
    stores: Stores, tmp_path: Path
) -> None:
    dataset = {"name": "upload", "target": "y"}
    intact = attempt(
        stores, "team-a", dataset=dataset | {"id": upload(stores, csv_rows(40), "team-a")}
    )
    assert intact.status.value == "succeeded"
    dataset_id = upload(stores, csv_rows(40), "team-a")
    uri = stores.datasets.get(dataset_id=dataset_id).uri
    run_id = uri.removeprefix("runs:/").split("/")[0]
    # someone who reaches MLflow writes other rows over the artifact
    (tmp_path / "d.csv").write_bytes(csv_rows(40, flip=True))
    stores.client.log_artifact(run_id, str(tmp_path / "d.csv"))
    job = attempt(stores, "team-a", dataset=dataset | {"id": dataset_id})
    assert job.status.value == "failed" and job.attempt == 1  # final: not claimed again
    assert job.error is not None and job.error["type"] == "dataset_changed"
    message = job.error["message"]
    assert dataset_id in message and hashlib.sha256(csv_rows(40)).hexdigest() in message
    assert hashlib.sha256(csv_rows(40, flip=True)).hexdigest() in message
    assert job.result is None and job.mlflow_run_id is not None
    run = stores.client.get_run(job.mlflow_run_id)
    assert run.info.status == "FAILED" and "loss/train" not in run.data.metrics
