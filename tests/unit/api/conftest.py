"""The app on a migrated SQLite file and an MLflow SQLite store in a temporary folder, with
no dispatcher: jobs stay queued. Driven in-process with Starlette's TestClient."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient

from api.main import create_app
from api.settings import Settings
from core.spec import parse_spec
from db.migrate import upgrade
from db.session import make_engine
from db.store import JobStore

IRIS = {"dataset": "iris", "model": {"hidden": [8]}, "optimizer": {"epochs": 3}}


@pytest.fixture
def make_settings(tmp_path: Path) -> Callable[..., Settings]:
    """Settings on the test's migrated SQLite file and MLflow store, with ``overrides``.
    ``testserver``, the ``Host`` of Starlette's TestClient, is among the allowed hosts."""
    db_url = f"sqlite:///{tmp_path}/gradq.db"
    upgrade(db_url)

    def make(**overrides: Any) -> Settings:
        values: dict[str, Any] = {
            "database_url": db_url,
            "mlflow_tracking_uri": f"sqlite:///{tmp_path}/mlflow.db",
            "allowed_hosts": "testserver",
            **overrides,
        }
        return Settings(**values)

    return make


@pytest.fixture
def make_client(make_settings: Callable[..., Settings]) -> Iterator[Callable[..., TestClient]]:
    clients: list[TestClient] = []

    def make(**overrides: Any) -> TestClient:
        client = TestClient(create_app(make_settings(**overrides)), raise_server_exceptions=False)
        client.__enter__()
        clients.append(client)
        return client

    yield make
    for c in reversed(clients):  # last started, first stopped
        c.__exit__(None, None, None)


@pytest.fixture
def client(make_client: Callable[..., TestClient]) -> TestClient:
    return make_client()


@pytest.fixture
def running_job(tmp_path: Path) -> Callable[..., str]:
    """Makes a job (an iris spec, of ``tenant``) claimed by a worker whose attempt stored its
    run id and, if given, its experiment id; returns the job's id."""

    def make(
        *,
        run_id: str,
        experiment_id: str | None,
        key: str | None = None,
        tenant: str = "default",
    ) -> str:
        engine = make_engine(f"sqlite:///{tmp_path}/gradq.db")
        try:
            store = JobStore(engine)
            job_id = store.submit(spec=parse_spec(IRIS), idempotency_key=key, tenant=tenant).id
            (claimed,) = store.claim(owner="w", lease_seconds=300, ids=[job_id])
            store.set_run(job_id=job_id, attempt=claimed.attempt, mlflow_run_id=run_id,
                          mlflow_experiment_id=experiment_id)  # fmt: skip
        finally:
            engine.dispose()
        return job_id

    return make


@pytest.fixture
def client_capped(make_client: Callable[..., TestClient]) -> TestClient:
    """A client of a service whose tenants may submit priorities up to 10."""
    return make_client(tenant_max_priority=10)
