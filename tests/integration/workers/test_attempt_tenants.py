"""Tenants through MLflow: attempts run in this process (``run_attempt`` without Ray) against
the real job database (SQLite) and a real MLflow SQLite store, as a service with API keys
runs them (``WorkerConfig(tenant_names=True)``)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import pytest
from mlflow import MlflowClient

from core.spec import parse_spec
from db.migrate import upgrade
from db.session import make_engine
from db.store import JobStore
from db.views import JobView
from workers.task import WorkerConfig, run_attempt

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
    return Stores(JobStore(make_engine(db_url)), config, MlflowClient(config.tracking_uri))


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
