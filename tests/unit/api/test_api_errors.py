"""The one error shape, mapped in api/errors.py: each domain error, FastAPI's own errors,
the body limit and a database that is away."""

from __future__ import annotations

from collections.abc import Callable, Iterator

import pytest
from fastapi import FastAPI, Query
from fastapi.testclient import TestClient

from api import errors
from api.middleware import BodyLimit
from core.csvdata import DataError
from core.spec import FieldError, InvalidSpec
from db.errors import (
    DatasetNotFound,
    IdempotencyConflict,
    InvalidCursor,
    InvalidTransition,
    JobNotFound,
)

RAISES: dict[str, Callable[[], Exception]] = {
    "spec": lambda: InvalidSpec(
        [
            FieldError(field="model.hidden[1]", message="too small"),
            FieldError(field="optimizer.lr", message="must be > 0"),
        ]
    ),
    "data": lambda: DataError.at("file", "row 3, column 'a': 'x' is not a number"),
    "job": lambda: JobNotFound("j1"),
    "dataset": lambda: DatasetNotFound("d1"),
    "transition": lambda: InvalidTransition("j1", "succeeded", "cancelled"),
    "idempotency": lambda: IdempotencyConflict("k", "j0"),
    "cursor": lambda: InvalidCursor("zz"),
    "api": lambda: errors.ApiError(429, "too_many_queued", "slow down", field="x"),
    "boom": lambda: RuntimeError("secret internals"),
}


@pytest.fixture
def client() -> Iterator[TestClient]:
    app = FastAPI()
    errors.install(app)
    app.add_middleware(BodyLimit, limit_for=lambda path: 100)

    @app.get("/raise/{what}")
    def raise_(what: str) -> None:
        raise RAISES[what]()

    @app.get("/typed")
    def typed(limit: int = Query(ge=1)) -> int:
        return limit

    @app.post("/echo")
    def echo(body: dict[str, int]) -> dict[str, int]:
        return body

    with TestClient(app, raise_server_exceptions=False) as c:
        yield c


@pytest.mark.parametrize(
    ("what", "status", "code", "field"),
    [
        ("spec", 422, "invalid_spec", "model.hidden[1]"),
        ("data", 422, "invalid_data", "file"),
        ("job", 404, "not_found", None),
        ("dataset", 404, "not_found", None),
        ("transition", 409, "job_succeeded", "status"),
        ("idempotency", 409, "idempotency_conflict", "Idempotency-Key"),
        ("cursor", 422, "invalid_cursor", "cursor"),
        ("api", 429, "too_many_queued", "x"),
        ("boom", 500, "internal", None),
    ],
)
def test_each_error_has_the_one_shape(
    client: TestClient, what: str, status: int, code: str, field: str | None
) -> None:
    r = client.get(f"/raise/{what}")
    assert r.status_code == status
    body = r.json()
    assert set(body["error"]) == {"code", "message", "field"}
    assert (body["error"]["code"], body["error"]["field"]) == (code, field)
    assert "secret internals" not in r.text


def test_a_spec_with_several_problems_lists_each(client: TestClient) -> None:
    body = client.get("/raise/spec").json()
    assert body["errors"] == [
        {"field": "model.hidden[1]", "message": "too small"},
        {"field": "optimizer.lr", "message": "must be > 0"},
    ]
    assert "2 problems" in body["error"]["message"]


def test_a_finished_job_names_its_status(client: TestClient) -> None:
    assert "is succeeded" in client.get("/raise/transition").json()["error"]["message"]


def test_fastapi_validation_errors_get_field_paths(client: TestClient) -> None:
    body = client.get("/typed?limit=0").json()
    assert body["error"]["field"] == "limit"
    assert body["errors"][0]["field"] == "limit"
    body = client.post("/echo", json={"a": "x"}).json()
    assert body["error"]["field"] == "a"


def test_malformed_json_is_a_400(client: TestClient) -> None:
    r = client.post("/echo", content=b"{not json", headers={"content-type": "application/json"})
    assert r.status_code == 400
    assert r.json()["error"]["code"] == "malformed_json"


def test_unknown_paths_and_methods(client: TestClient) -> None:
    r = client.get("/nowhere")
    assert (r.status_code, r.json()["error"]["code"]) == (404, "not_found")
    r = client.delete("/typed")
    assert (r.status_code, r.json()["error"]["code"]) == (405, "method_not_allowed")


def test_body_over_the_limit_by_content_length(client: TestClient) -> None:
    r = client.post("/echo", content=b"{" + b" " * 200 + b"}")
    assert r.status_code == 413
    assert r.json()["error"]["code"] == "payload_too_large"
    assert "100 bytes" in r.json()["error"]["message"]


def test_body_over_the_limit_while_streaming(client: TestClient) -> None:
    def chunks() -> Iterator[bytes]:  # no Content-Length: a chunked body
        yield b'{"a": 1'
        for _ in range(50):
            yield b"          "
        yield b"}"

    r = client.post("/echo", content=chunks(), headers={"content-type": "application/json"})
    assert r.status_code == 413
    assert r.json()["error"]["code"] == "payload_too_large"


def test_validation_errors_strip_the_location_kind() -> None:
    from fastapi.exceptions import RequestValidationError

    exc = RequestValidationError(
        [
            {"loc": ("body", "model", "hidden", 1), "msg": "too small", "type": "x"},
            {"loc": ("header", "Idempotency-Key"), "msg": "too long", "type": "x"},
        ]
    )
    assert [e.field for e in errors.validation_errors(exc)] == [
        "model.hidden[1]",
        "Idempotency-Key",
    ]
