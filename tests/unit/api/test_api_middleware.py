"""Every request enters through FastAPI and passes the app's middleware: ``POST /v1/jobs``
as every other route. A middleware added to the app once ``create_app`` has built it (a
plain ASGI class, and one of ``@app.middleware("http")``) sees a submit exactly as it
sees a list of jobs: the request, its body, its answer's status, and it can add a header.
The body limit of ``api.middleware`` counts every body whose length HTTP does not frame."""

from __future__ import annotations

import asyncio
import itertools
import json
from collections.abc import Awaitable, Callable
from typing import Any

import pytest
from fastapi import Request, Response
from fastapi.testclient import TestClient
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from api.main import create_app
from api.middleware import BodyLimit
from api.settings import Settings

IRIS = {"dataset": "iris", "model": {"hidden": [8]}, "optimizer": {"epochs": 2}}


class Recorder:
    """Records each HTTP request's method, path, body bytes read and answered status."""

    def __init__(self, app: ASGIApp, *, seen: list[dict[str, Any]]) -> None:
        self.app, self.seen = app, seen

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        entry = {"method": scope["method"], "path": scope["path"], "body": 0, "status": None}

        async def reading() -> Message:
            message = await receive()
            entry["body"] += len(message.get("body", b""))
            return message

        async def answering(message: Message) -> None:
            if message["type"] == "http.response.start":
                entry["status"] = message["status"]
            await send(message)

        await self.app(scope, reading, answering)
        self.seen.append(entry)


def test_a_middleware_added_later_sees_a_submit_as_any_request(
    make_settings: Callable[..., Settings],
) -> None:
    app = create_app(make_settings())
    seen: list[dict[str, Any]] = []
    app.add_middleware(Recorder, seen=seen)
    ids = itertools.count(1)

    @app.middleware("http")
    async def request_id(
        request: Request, call_next: Callable[[Request], Awaitable[Response]]
    ) -> Response:
        response = await call_next(request)
        response.headers["X-Request-Id"] = f"r{next(ids)}"
        return response

    body, bad = json.dumps(IRIS).encode(), b'{"dataset": "nope"}'
    as_json = {"Content-Type": "application/json"}
    with TestClient(app) as client:
        submitted = client.post("/v1/jobs", content=body, headers=as_json)
        listed = client.get("/v1/jobs")
        refused = client.post("/v1/jobs", content=bad, headers=as_json)
    assert (submitted.status_code, listed.status_code, refused.status_code) == (201, 200, 422)
    assert [r.headers.get("X-Request-Id") for r in (submitted, listed, refused)] == [
        "r1",
        "r2",
        "r3",
    ]
    assert seen == [
        {"method": "POST", "path": "/v1/jobs", "body": len(body), "status": 201},
        {"method": "GET", "path": "/v1/jobs", "body": 0, "status": 200},
        {"method": "POST", "path": "/v1/jobs", "body": len(bad), "status": 422},
    ]
    assert listed.json()["items"][0]["id"] == submitted.json()["id"]


@pytest.mark.parametrize(
    ("headers", "untouched"),
    [
        ([(b"content-length", b"150")], True),  # HTTP frames exactly that many bytes
        ([(b"content-length", b"50"), (b"transfer-encoding", b"chunked")], False),
        ([(b"transfer-encoding", b"chunked")], False),
        ([(b"content-length", b"many")], False),
    ],
)
def test_the_body_limit_counts_every_body_not_framed_by_its_length(
    headers: list[tuple[bytes, bytes]], untouched: bool
) -> None:
    """A body of a declared length within the limit reaches the app as the server sends
    it; any other is counted as it streams in, and refused once past the limit."""
    chunks = [b"x" * 75, b"x" * 75]
    received: list[Receive] = []
    sent: list[Message] = []

    async def app(scope: Scope, receive: Receive, send: Send) -> None:
        received.append(receive)
        while (await receive()).get("more_body"):
            pass
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": b""})

    async def receive() -> Message:
        return {"type": "http.request", "body": chunks.pop(0), "more_body": bool(chunks)}

    async def send(message: Message) -> None:
        sent.append(message)

    limited = BodyLimit(app, limit_for=lambda path: 200 if untouched else 100)
    scope = {"type": "http", "method": "POST", "path": "/v1/jobs", "headers": headers}
    asyncio.run(limited(scope, receive, send))
    assert (received[0] is receive) == untouched
    assert sent[0]["status"] == (200 if untouched else 413)
