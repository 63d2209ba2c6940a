"""Fixtures for the queue tests: every test runs once on SQLite and once on PostgreSQL.

SQLite: a fresh file in the test's temp folder (a file, so other processes can open it).
PostgreSQL: a fresh schema ``t_<uuid>`` per test in the database at ``GRADQ_TEST_POSTGRES_URL``
(default ``postgresql+psycopg://postgres@127.0.0.1:5432/test``); the URL handed to the code
sets ``options=-csearch_path=t_<uuid>``, so the migrations create their tables there. The
schema is dropped afterwards. If the server does not answer within 2 s (checked once per
session) the PostgreSQL half is skipped with one line saying so.
"""

from __future__ import annotations

import uuid
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from sqlalchemy import Engine, insert

from core.spec import JobSpec, parse_spec
from db.datasets import DatasetStore
from db.keys import KeyStore
from db.migrate import upgrade
from db.models import EVENTS, JOBS
from db.session import make_engine
from db.store import JobStore

BACKENDS = [
    pytest.param("sqlite", id="sqlite"),
    pytest.param("postgres", id="postgres", marks=pytest.mark.postgres),
]


@pytest.fixture(params=BACKENDS)
def db_url(request: pytest.FixtureRequest, tmp_path: Any) -> Iterator[str]:
    """An empty database (no tables) on the parametrised backend, private to this test."""
    if request.param == "sqlite":
        yield f"sqlite:///{tmp_path / 'gradq.db'}"
        return
    yield request.getfixturevalue("pg_url")


@pytest.fixture
def migrated_url(db_url: str) -> str:
    """``db_url`` after ``alembic upgrade head`` (through :func:`db.migrate.upgrade`)."""
    upgrade(db_url)
    return db_url


@pytest.fixture
def engine(migrated_url: str) -> Iterator[Engine]:
    eng = make_engine(migrated_url)
    yield eng
    eng.dispose()


@pytest.fixture
def store(engine: Engine) -> JobStore:
    return JobStore(engine)


@pytest.fixture
def keys(engine: Engine) -> KeyStore:
    return KeyStore(engine)


@pytest.fixture
def datasets(engine: Engine) -> DatasetStore:
    return DatasetStore(engine)


@pytest.fixture
def make_spec() -> Callable[..., JobSpec]:
    """A factory of valid specs: ``make_spec(priority=3, name="x")``."""

    def make(**overrides: Any) -> JobSpec:
        return parse_spec({"dataset": "iris", **overrides})

    return make


BulkQueue = Callable[..., list[str]]


@pytest.fixture
def bulk_queue() -> BulkQueue:
    """The :func:`insert_queued` helper, as a fixture."""
    return insert_queued


def insert_queued(
    engine: Engine, n: int, *, spec: JobSpec, tenant: str = "default", priority: int = 0
) -> list[str]:
    """Insert ``n`` queued jobs (and their submit events) in one transaction; oldest first.

    A test helper for large queues: rows as :meth:`JobStore.submit` writes them, each
    ``created_at`` one microsecond apart.
    """
    start = datetime.now(UTC)
    spec_json = spec.model_dump(mode="json")
    ids = [str(uuid.uuid4()) for _ in range(n)]
    rows = []
    for i, job_id in enumerate(ids):
        at = start + timedelta(microseconds=i)
        rows.append(
            dict(id=job_id, tenant=tenant, name=spec.name, spec=spec_json, status="queued",
                 priority=priority, attempt=0, max_attempts=spec.max_attempts,
                 cancel_requested=False, created_at=at, updated_at=at)
        )  # fmt: skip
    events = [
        dict(job_id=r["id"], at=r["created_at"], from_status=None, to_status="queued",
             attempt=0, reason="submitted")
        for r in rows
    ]  # fmt: skip
    with engine.begin() as conn:
        conn.execute(insert(JOBS), rows)
        conn.execute(insert(EVENTS), events)
    return ids
