"""What the API answers for the database driver's errors, now read by ``db.errors`` (the API
imports no SQLAlchemy): away → 503 ``database_unavailable``, a refused value → 422
``invalid_value``, anything else → 500 ``internal``."""

from __future__ import annotations

import asyncio
import json

import pytest
from sqlalchemy.exc import (
    DataError,
    IntegrityError,
    InterfaceError,
    OperationalError,
    ProgrammingError,
)
from sqlalchemy.exc import TimeoutError as PoolTimeout
from starlette.requests import Request

from api import errors
from db.errors import StoreUnavailable, ValueRefused, driver_error

CAUSE = Exception("server closed the connection")


@pytest.mark.parametrize(
    ("exc", "status", "code"),
    [
        (OperationalError("SELECT 1", {}, CAUSE), 503, "database_unavailable"),
        (InterfaceError("SELECT 1", {}, CAUSE), 503, "database_unavailable"),
        (PoolTimeout("QueuePool limit reached"), 503, "database_unavailable"),
        (StoreUnavailable("the database is away"), 503, "database_unavailable"),
        (DataError("INSERT", {}, Exception("NUL in text")), 422, "invalid_value"),
        (ValueRefused("NUL in text"), 422, "invalid_value"),
        (IntegrityError("INSERT", {}, Exception("duplicate key")), 500, "internal"),
        (ProgrammingError("SELECT", {}, Exception("no such table")), 500, "internal"),
    ],
)
def test_database_errors_get_their_answers(exc: Exception, status: int, code: str) -> None:
    request = Request({"type": "http", "method": "GET", "path": "/", "headers": []})
    response = asyncio.run(errors.respond(request, exc))
    assert response.status_code == status
    assert json.loads(response.body)["error"]["code"] == code
    if status == 503:
        assert response.headers["Retry-After"] == "5"


def test_driver_error_names_only_what_it_knows() -> None:
    assert isinstance(driver_error(OperationalError("x", {}, CAUSE)), StoreUnavailable)
    assert isinstance(driver_error(DataError("x", {}, CAUSE)), ValueRefused)
    assert driver_error(IntegrityError("x", {}, CAUSE)) is None
    assert driver_error(ValueError("x")) is None
