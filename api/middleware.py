"""The app's own ASGI middleware, applied to every route (``POST /v1/jobs`` included):
a request-body size limit (:class:`BodyLimit`) and the count of answers by status class
(:class:`CountResponses`, read by ``/metrics``). Both are plain ASGI classes: a request
passes each for the price of a function call and a wrapped ``send``."""

from __future__ import annotations

import json
from collections.abc import Callable

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from api.errors import BodyTooLarge, error_body

STATUS_CLASSES = ("1xx", "2xx", "3xx", "4xx", "5xx")


class BodyLimit:
    """Refuse a body over ``limit_for(path)`` bytes with 413: at once when ``Content-Length``
    says so, else as soon as the streamed bytes pass it (a chunked upload). A body of a
    declared length within the limit passes untouched: the server reads exactly that many
    bytes as the body (HTTP's framing), so there is nothing to count."""

    def __init__(self, app: ASGIApp, *, limit_for: Callable[[str], int]) -> None:
        self.app, self.limit_for = app, limit_for

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        limit = self.limit_for(scope.get("path", ""))
        declared = _declared_length(scope)
        if declared is not None:
            if declared > limit:
                await _refuse(send, limit)
            else:
                await self.app(scope, receive, send)
            return
        seen = 0
        started = False

        async def counted() -> Message:
            nonlocal seen
            message = await receive()
            if message["type"] == "http.request":
                seen += len(message.get("body", b""))
                if seen > limit:
                    raise BodyTooLarge(limit)
            return message

        async def watched(message: Message) -> None:
            nonlocal started
            if message["type"] == "http.response.start":
                started = True
            await send(message)

        try:
            await self.app(scope, counted, watched)
        except BodyTooLarge:
            if started:
                raise
            await _refuse(send, limit)


def _declared_length(scope: Scope) -> int | None:
    """The body's length as ``Content-Length`` gives it; None when it does not, or when a
    ``Transfer-Encoding`` says how the body is framed instead."""
    declared = None
    for name, value in scope.get("headers") or ():
        if name == b"content-length":
            declared = value
        elif name == b"transfer-encoding":
            return None
    if declared is None:
        return None
    try:
        return int(declared)
    except ValueError:
        return None


async def _refuse(send: Send, limit: int) -> None:
    body = json.dumps(
        error_body("payload_too_large", f"request body larger than the limit of {limit:,} bytes")
    ).encode()
    await send(
        {
            "type": "http.response.start",
            "status": 413,
            "headers": [
                (b"content-type", b"application/json"),
                (b"content-length", str(len(body)).encode()),
                (b"connection", b"close"),
            ],
        }
    )
    await send({"type": "http.response.body", "body": body})


class ResponseCounts:
    """HTTP answers by status class (``"2xx"``, …, ``"5xx"``), counted on the event loop."""

    def __init__(self) -> None:
        self.by_class = dict.fromkeys(STATUS_CLASSES, 0)

    def add(self, status: int) -> None:
        name = f"{status // 100}xx"
        if name in self.by_class:
            self.by_class[name] += 1


class CountResponses:
    """Count each HTTP answer in ``counts`` as its status goes out. A request that raised
    before answering counts as a 5xx: the server answers it 500 (Starlette's outermost
    ``ServerErrorMiddleware``, outside every middleware added to the app)."""

    def __init__(self, app: ASGIApp, *, counts: ResponseCounts) -> None:
        self.app, self.counts = app, counts

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        status = 0

        async def counted(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, counted)
        except Exception:
            status = status or 500  # nothing answered yet: the server answers 500
            raise
        finally:
            if status:
                self.counts.add(status)
