"""What the API answers for the store's database errors (``db`` raises them in place of the
driver's; the API imports no SQLAlchemy): away → 503 ``database_unavailable``, a refused
value → 422 ``invalid_value``; a driver error that reached the API anyway is a bug → 500
``internal``."""

from __future__ import annotations

import asyncio
import json

import pytest
from sqlalchemy.exc import OperationalError
from starlette.requests import Request

from api import errors
from db.errors import StoreUnavailable, ValueRefused


@pytest.mark.parametrize(
    ("exc", "status", "code"),
    [
        (StoreUnavailable("the database is away"), 503, "database_unavailable"),
        (ValueRefused("NUL in text"), 422, "invalid_value"),
        (OperationalError("SELECT 1", {}, Exception("not translated")), 500, "internal"),
    ],
)
def test_database_errors_get_their_answers(exc: Exception, status: int, code: str) -> None:
    request = Request({"type": "http", "method": "GET", "path": "/", "headers": []})
    response = asyncio.run(errors.respond(request, exc))
    assert response.status_code == status
    assert json.loads(response.body)["error"]["code"] == code
    if status == 503:
        assert response.headers["Retry-After"] == "5"
