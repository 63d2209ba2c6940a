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
from db.migrate import upgrade


@pytest.fixture
def make_settings(tmp_path: Path) -> Callable[..., Settings]:
    """Settings on the test's migrated SQLite file and MLflow store, with ``overrides``."""
    db_url = f"sqlite:///{tmp_path}/gradq.db"
    upgrade(db_url)

    def make(**overrides: Any) -> Settings:
        values: dict[str, Any] = {
            "database_url": db_url,
            "mlflow_tracking_uri": f"sqlite:///{tmp_path}/mlflow.db",
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
