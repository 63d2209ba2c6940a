"""Every error the API returns, in one shape, mapped in one place.

``{"error": {"code", "message", "field"}}``, plus ``"errors": [{"field", "message"}]`` for a
spec with several problems. Domain errors of ``core`` and ``db`` are translated here and
nowhere else; a route raises :class:`ApiError` for what only HTTP knows (auth, limits).
No input yields a 5xx: a database that is away is a 503 with a clear body, and anything
unexpected is logged and answered with a 500 in the same shape (never a traceback).
"""

from __future__ import annotations

import json
import logging
from collections.abc import Awaitable, Callable, Mapping, Sequence
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from core.csvdata import DataError
from core.spec import FieldError, InvalidSpec, field_path
from db.errors import (
    DatasetNotFound,
    IdempotencyConflict,
    InvalidCursor,
    InvalidTransition,
    JobNotFound,
    StaleAttempt,
    StoreUnavailable,
    ValueRefused,
)
from db.sweeps import SweepNotFound
from db.webhooks import WebhookNotFound
from workers.tracking.read import TrackingUnavailable

log = logging.getLogger("gradq.api")

_HTTP_CODES = {
    400: "bad_request",
    401: "unauthorized",
    403: "forbidden",
    404: "not_found",
    405: "method_not_allowed",
    406: "not_acceptable",
    409: "conflict",
    413: "payload_too_large",
    415: "unsupported_media_type",
    422: "invalid",
    429: "too_many_requests",
    503: "unavailable",
}


class ApiError(Exception):
    """An error a route raises on purpose: status, a stable code, a message, the field."""

    def __init__(
        self,
        status: int,
        code: str,
        message: str,
        *,
        field: str | None = None,
        headers: dict[str, str] | None = None,
    ) -> None:
        super().__init__(message)
        self.status, self.code, self.message, self.field = status, code, message, field
        self.headers = headers


class BodyTooLarge(StarletteHTTPException):
    """Raised while the body streams in past the limit. An ``HTTPException`` so that FastAPI's
    body reading lets it through instead of turning it into a 400."""

    def __init__(self, limit: int) -> None:
        super().__init__(413, f"request body larger than the limit of {limit:,} bytes")
        self.limit = limit


def error_body(
    code: str,
    message: str,
    field: str | None = None,
    errors: Sequence[FieldError] | None = None,
) -> dict[str, Any]:
    body: dict[str, Any] = {"error": {"code": code, "message": message, "field": field}}
    if errors is not None:
        body["errors"] = [{"field": e.field, "message": e.message} for e in errors]
    return body


def error_response(
    status: int,
    code: str,
    message: str,
    *,
    field: str | None = None,
    errors: Sequence[FieldError] | None = None,
    headers: Mapping[str, str] | None = None,
) -> JSONResponse:
    return JSONResponse(error_body(code, message, field, errors), status, headers=headers)


def invalid_spec_response(exc: InvalidSpec, code: str | None = None) -> JSONResponse:
    first = exc.errors[0] if exc.errors else FieldError(field="(root)", message=str(exc))
    message = first.message if len(exc.errors) <= 1 else f"{len(exc.errors)} problems: {exc}"
    return error_response(
        422, code or "invalid_spec", message, field=first.field, errors=exc.errors
    )


def validation_errors(exc: RequestValidationError) -> list[FieldError]:
    """FastAPI's errors with core's field paths: ``('query', 'limit')`` → ``limit``,
    ``('body', 'model', 'hidden', 1)`` → ``model.hidden[1]``."""
    out = []
    for err in exc.errors():
        loc = list(err.get("loc", ()))
        if loc and loc[0] in ("body", "query", "path", "header", "cookie", "form"):
            loc = loc[1:]
        out.append(FieldError(field=field_path(loc), message=str(err.get("msg", "invalid"))))
    return out


# --- handlers ----------------------------------------------------------------------------------


async def _api_error(_: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, ApiError)
    return error_response(exc.status, exc.code, exc.message, field=exc.field, headers=exc.headers)


async def _invalid_spec(_: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, InvalidSpec)
    return invalid_spec_response(exc, "invalid_data" if isinstance(exc, DataError) else None)


async def _not_found(_: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, JobNotFound | DatasetNotFound | SweepNotFound | WebhookNotFound)
    return error_response(404, "not_found", str(exc))


async def _transition(_: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, InvalidTransition)
    message = f"job {exc.job_id} is {exc.from_status}: it cannot become {exc.to_status}"
    return error_response(409, f"job_{exc.from_status}", message, field="status")


async def _stale(_: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, StaleAttempt)
    return error_response(409, "stale_attempt", str(exc))


async def _idempotency(_: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, IdempotencyConflict)
    message = (
        f"Idempotency-Key {exc.key!r} was used for job {exc.existing_job_id} with a different "
        "spec; use a new key for a new job"
    )
    return error_response(409, "idempotency_conflict", message, field="Idempotency-Key")


async def _cursor(_: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, InvalidCursor)
    return error_response(422, "invalid_cursor", "not a cursor this service gave", field="cursor")


async def _request_validation(_: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, RequestValidationError)
    errors = validation_errors(exc)
    if any(e.get("type") == "json_invalid" for e in exc.errors()):
        return error_response(400, "malformed_json", "the body is not valid JSON", errors=errors)
    first = errors[0] if errors else FieldError(field="(root)", message="invalid request")
    return error_response(422, "invalid", first.message, field=first.field, errors=errors)


async def _http(_: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, StarletteHTTPException)
    code = _HTTP_CODES.get(exc.status_code, "error")
    message = exc.detail if isinstance(exc.detail, str) else json.dumps(exc.detail)
    if exc.status_code == 404 and message == "Not Found":
        message = "no such path"
    return error_response(exc.status_code, code, message, headers=exc.headers)


async def _database(_: Request, exc: Exception) -> JSONResponse:
    if isinstance(exc, ValueRefused):  # e.g. a NUL in text
        return error_response(422, "invalid_value", "a value the database cannot store")
    log.warning("database unavailable: %s", exc)
    return error_response(
        503,
        "database_unavailable",
        "the database is not reachable; try again shortly",
        headers={"Retry-After": "5"},
    )


async def _tracking(_: Request, exc: Exception) -> JSONResponse:
    return error_response(503, "mlflow_unavailable", str(exc), headers={"Retry-After": "5"})


async def _unexpected(_: Request, exc: Exception) -> JSONResponse:
    log.exception("unexpected error", exc_info=exc)
    return error_response(500, "internal", "an unexpected error; it was logged")


_HANDLERS: dict[type[Exception], Callable[[Request, Exception], Awaitable[JSONResponse]]] = {
    ApiError: _api_error,
    InvalidSpec: _invalid_spec,
    JobNotFound: _not_found,
    DatasetNotFound: _not_found,
    SweepNotFound: _not_found,
    WebhookNotFound: _not_found,
    InvalidTransition: _transition,
    StaleAttempt: _stale,
    IdempotencyConflict: _idempotency,
    InvalidCursor: _cursor,
    RequestValidationError: _request_validation,
    StarletteHTTPException: _http,
    StoreUnavailable: _database,
    ValueRefused: _database,
    TrackingUnavailable: _tracking,
    Exception: _unexpected,
}


def install(app: FastAPI) -> None:
    """Register every mapping on ``app``."""
    for kind, handler in _HANDLERS.items():
        app.add_exception_handler(kind, handler)


async def respond(request: Request, exc: Exception) -> JSONResponse:
    """The answer ``install``'s handlers give for ``exc``: the handler of the nearest class
    in its MRO, as Starlette picks it."""
    for kind in type(exc).__mro__:
        handler = _HANDLERS.get(kind)
        if handler is not None:
            return await handler(request, exc)
    return await _unexpected(request, exc)
