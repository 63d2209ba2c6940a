"""``POST /v1/jobs`` answered before FastAPI's layers: the one hot path of the API.

Through FastAPI, every submit passes its telemetry, body-limit, error, exit-stack and routing
layers and has its dependencies solved (the bearer scheme, the tenant, the
``Idempotency-Key`` header): about a third of the server's CPU per submit under load (py-spy,
bench/RESULTS.md, API). :class:`GradqApp` answers ``POST /v1/jobs`` itself with the route's
own code (``api.routes.jobs.submit_job``), the same tenant resolution (``api.deps``), the
same body limit (``api.middleware.BodyLimit``) and the same error answers
(``api.errors.respond``); every other request, and the lifespan, go through FastAPI as
before. The FastAPI route stays: the OpenAPI schema documents it, and it answers what the
fast path does not match (a ``root_path`` prefix, a trailing slash).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from fastapi import FastAPI
from fastapi.exceptions import RequestValidationError
from starlette.requests import Request
from starlette.responses import Response
from starlette.types import Receive, Scope, Send

from api import errors
from api.deps import Services, bearer_key, resolve_tenant
from api.errors import BodyTooLarge
from api.middleware import BodyLimit
from api.routes.jobs import MAX_IDEMPOTENCY_KEY, submit_job

PATH = "/v1/jobs"


class GradqApp(FastAPI):
    """FastAPI, with ``POST /v1/jobs`` served by :func:`submit` under ``BodyLimit``."""

    def __init__(self, *, limit_for: Callable[[str], int], **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self._fast_submit = BodyLimit(submit, limit_for=limit_for)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http" and scope["method"] == "POST" and scope["path"] == PATH:
            scope["app"] = self  # as Starlette sets it: the handler finds the services there
            await self._fast_submit(scope, receive, send)
            return
        await super().__call__(scope, receive, send)


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
