"""``/metrics`` counts the server's HTTP answers by status class
(``gradq_http_responses_total``): the fast ``POST /v1/jobs`` path, the FastAPI routes, an
error answered 500 by the error handlers and a request that raised before answering."""

from __future__ import annotations

import re
from collections.abc import Callable

import pytest
from fastapi.testclient import TestClient
from starlette.types import Receive, Scope, Send

from api.fast_submit import GradqApp

IRIS = {"dataset": "iris", "model": {"hidden": [8]}, "optimizer": {"epochs": 2}}


def answers(client: TestClient) -> dict[str, int]:
    r = client.get("/metrics")
    assert r.status_code == 200, r.text
    found = re.findall(r'^gradq_http_responses_total\{status="(\dxx)"\} (\d+)$', r.text, re.M)
    return {name: int(n) for name, n in found}


def test_every_answer_is_counted_by_status_class(
    make_client: Callable[..., TestClient], monkeypatch: pytest.MonkeyPatch
) -> None:
    client = make_client()
    app = client.app
    assert isinstance(app, GradqApp)
    assert answers(client) == {"1xx": 0, "2xx": 0, "3xx": 0, "4xx": 0, "5xx": 0}
    assert client.post("/v1/jobs", json=IRIS).status_code == 201  # the fast path
    assert client.post("/v1/jobs", content=b"{").status_code == 400  # the fast path, refused
    assert client.get("/v1/jobs/nope").status_code == 404  # through FastAPI
    assert client.get("/healthz").status_code == 200
    # /metrics itself counts once it has answered: the 2xx below include the first one
    assert answers(client) == {"1xx": 0, "2xx": 3, "3xx": 0, "4xx": 2, "5xx": 0}

    async def broken(*_: object) -> None:
        raise RuntimeError("boom")

    services = app.state.services
    monkeypatch.setattr(services.submits, "submit", broken)  # the fast path's handler: 500
    assert client.post("/v1/jobs", json=IRIS).status_code == 500

    def fails(**_: object) -> None:
        raise RuntimeError("boom")

    monkeypatch.setattr(services.store, "get", fails)  # a FastAPI route's handlers: 500
    assert client.get("/v1/jobs/nope").status_code == 500

    async def raises(scope: Scope, receive: Receive, send: Send) -> None:
        raise RuntimeError("nothing answered")

    monkeypatch.setattr(app, "_fast_submit", raises)  # raised before answering: the server's 500
    assert client.post("/v1/jobs", json=IRIS).status_code == 500
    assert answers(client) == {"1xx": 0, "2xx": 4, "3xx": 0, "4xx": 2, "5xx": 3}
