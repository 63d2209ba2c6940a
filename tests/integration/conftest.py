"""Fixtures shared by the integration tests: the real PostgreSQL, one schema per test.

The server is ``GRADQ_TEST_POSTGRES_URL`` (default
``postgresql+psycopg://postgres@127.0.0.1:5432/test``). ``pg_url`` creates a fresh schema
``t_<uuid>`` and hands out a URL whose ``options=-csearch_path=t_<uuid>`` makes the migrations
create their tables there; the schema is dropped afterwards. If the server does not answer
within 2 s (asked once per session) those tests are skipped, with one line at the end.
"""

from __future__ import annotations

import functools
import os
import uuid
from collections.abc import Iterator
from typing import Any

import psycopg
import pytest
from sqlalchemy import make_url

DEFAULT_PG_URL = "postgresql+psycopg://postgres@127.0.0.1:5432/test"


def postgres_base_url() -> str:
    """The PostgreSQL URL the tests use (SQLAlchemy form)."""
    return os.environ.get("GRADQ_TEST_POSTGRES_URL", DEFAULT_PG_URL)


def libpq_url(url: str) -> str:
    """The same URL in the form psycopg/libpq takes."""
    return make_url(url).set(drivername="postgresql").render_as_string(hide_password=False)


@functools.cache
def postgres_down_reason() -> str | None:
    """None when PostgreSQL answers within 2 s (asked once per session); else why not."""
    url = postgres_base_url()
    try:
        psycopg.connect(libpq_url(url), connect_timeout=2).close()
    except psycopg.Error as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        safe = make_url(url).render_as_string(hide_password=True)
        return f"PostgreSQL at {safe} does not answer ({first})"
    return None


@pytest.fixture(scope="session")
def postgres_down() -> str | None:
    return postgres_down_reason()


def pytest_terminal_summary(terminalreporter: Any) -> None:
    """One line at the end when the PostgreSQL tests were skipped."""
    if postgres_down_reason.cache_info().currsize and postgres_down_reason() is not None:
        terminalreporter.write_line(
            f"gradq: {postgres_down_reason()}: every [postgres] test was skipped",
            yellow=True,
        )


@pytest.fixture
def pg_url(postgres_down: str | None) -> Iterator[str]:
    """A URL into a fresh, empty schema of the test PostgreSQL (skips when it is down)."""
    if postgres_down is not None:
        pytest.skip(f"{postgres_down}: PostgreSQL tests skipped")
    base = postgres_base_url()
    schema = f"t_{uuid.uuid4().hex[:20]}"
    with psycopg.connect(libpq_url(base), autocommit=True) as admin:
        admin.execute(f"CREATE SCHEMA {schema}")
    url = make_url(base).update_query_dict({"options": f"-csearch_path={schema}"})
    try:
        yield url.render_as_string(hide_password=False)
    finally:
        with psycopg.connect(libpq_url(base), autocommit=True) as admin:
            admin.execute(f"DROP SCHEMA {schema} CASCADE")
            # where sweeps keep their Optuna studies (workers.sweeps.optuna_schema)
            admin.execute(f"DROP SCHEMA IF EXISTS {schema}_optuna CASCADE")
