"""``POST /v1/jobs`` answered before FastAPI's layers: the one hot path of the API.

Through FastAPI, every submit passes its telemetry, body-limit, error, exit-stack and routing
layers and has its dependencies solved (the bearer scheme, the tenant, the
``Idempotency-Key`` header): a large share of the server's CPU per submit, for work a submit
does not need (bench/RESULTS.md, API). :class:`GradqApp` answers ``POST /v1/jobs`` itself
with the route's own code (``api.routes.jobs.submit_job``), the same tenant resolution
(``api.deps``), the same body limit (``api.middleware.BodyLimit``) and the same error answers
(``api.errors.respond``); every other request, and the lifespan, go through FastAPI. The
FastAPI route stays: the OpenAPI schema documents it, and it answers what the fast path does
not match (a ``root_path`` prefix, a trailing slash).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from fastapi import FastAPI
from fastapi.exceptions import RequestValidationError
from starlette.requests import Request
from starlette.responses import Response
from starlette.types import Message, Receive, Scope, Send

from api import errors
from api.deps import Services, bearer_key, resolve_tenant
from api.errors import BodyTooLarge
from api.middleware import BodyLimit
from api.routes.jobs import MAX_IDEMPOTENCY_KEY, submit_job

PATH = "/v1/jobs"
STATUS_CLASSES = ("1xx", "2xx", "3xx", "4xx", "5xx")


class ResponseCounts:
    """The HTTP answers of this process by status class (``"2xx"``, …, ``"5xx"``), counted
    on the event loop as their status goes out. A request that raised before answering counts
    as a 5xx: the server answers it 500."""

    def __init__(self) -> None:
        self.by_class = dict.fromkeys(STATUS_CLASSES, 0)

    def add(self, status: int) -> None:
        name = f"{status // 100}xx"
        if name in self.by_class:
            self.by_class[name] += 1


class GradqApp(FastAPI):
    """FastAPI, with ``POST /v1/jobs`` served by :func:`submit` under ``BodyLimit``, and its
    answers counted in ``responses``."""

    def __init__(self, *, limit_for: Callable[[str], int], **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self._fast_submit = BodyLimit(submit, limit_for=limit_for)
        self.responses = ResponseCounts()

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await super().__call__(scope, receive, send)
            return
        status = 0

        async def counted(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        try:
            if scope["method"] == "POST" and scope["path"] == PATH:
                scope["app"] = self  # as Starlette sets it: the handler finds the services there
                await self._fast_submit(scope, receive, counted)
            else:
                await super().__call__(scope, receive, counted)
        except Exception:
            status = status or 500  # nothing answered yet: the server answers 500
            raise
        finally:
            if status:
                self.responses.add(status)


async def submit(scope: Scope, receive: Receive, send: Send) -> None:
    """The ASGI handler of ``POST /v1/jobs``: every error answered as the app's handlers
    answer it (a body over the limit is left to ``BodyLimit``, which closes the connection)."""
    request = Request(scope, receive)
    try:
        response = await _submit(request)
    except BodyTooLarge:
        raise
    except Exception as exc:
        response = await errors.respond(request, exc)
    await response(scope, receive, send)


async def _submit(request: Request) -> Response:
    services: Services = request.app.state.services
    headers = request.headers
    tenant = await resolve_tenant(services, bearer_key(headers.get("authorization")))
    key = headers.get("idempotency-key")
    if key is not None and len(key) > MAX_IDEMPOTENCY_KEY:
        raise RequestValidationError(  # as FastAPI's header validation words it
            [
                {
                    "type": "string_too_long",
                    "loc": ("header", "Idempotency-Key"),
                    "msg": f"String should have at most {MAX_IDEMPOTENCY_KEY} characters",
                    "input": key,
                    "ctx": {"max_length": MAX_IDEMPOTENCY_KEY},
                }
            ]
        )
    return await submit_job(request, tenant, key)
