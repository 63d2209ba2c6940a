"""``/metrics`` counts the server's HTTP answers by status class
(``gradq_http_responses_total``, ``api.middleware.CountResponses``): ``POST /v1/jobs`` and
every other route alike, each answer once, the body limit's 413, an error answered 500 by
the error handlers and a request that raised before answering."""

from __future__ import annotations

import re
from collections.abc import Callable

import pytest
from fastapi.testclient import TestClient

IRIS = {"dataset": "iris", "model": {"hidden": [8]}, "optimizer": {"epochs": 2}}


def answers(client: TestClient) -> dict[str, int]:
    r = client.get("/metrics")
    assert r.status_code == 200, r.text
    found = re.findall(r'^gradq_http_responses_total\{status="(\dxx)"\} (\d+)$', r.text, re.M)
    return {name: int(n) for name, n in found}


def test_every_answer_is_counted_once_by_status_class(
    make_client: Callable[..., TestClient], monkeypatch: pytest.MonkeyPatch
) -> None:
    client = make_client(max_body_bytes=2048)
    assert answers(client) == {"1xx": 0, "2xx": 0, "3xx": 0, "4xx": 0, "5xx": 0}
    for _ in range(3):
        assert client.post("/v1/jobs", json=IRIS).status_code == 201
    # /metrics itself counts once it has answered: each count below holds the one before
    assert answers(client) == {"1xx": 0, "2xx": 4, "3xx": 0, "4xx": 0, "5xx": 0}
    as_json = {"Content-Type": "application/json"}
    assert client.post("/v1/jobs", content=b"{", headers=as_json).status_code == 400
    assert client.post("/v1/jobs", json={**IRIS, "name": "n" * 3000}).status_code == 413
    assert client.get("/v1/jobs/nope").status_code == 404
    assert client.get("/healthz").status_code == 200
    assert answers(client) == {"1xx": 0, "2xx": 6, "3xx": 0, "4xx": 3, "5xx": 0}

    async def broken(*_: object) -> None:
        raise RuntimeError("boom")

    services = client.app.state.services  # type: ignore[attr-defined]
    monkeypatch.setattr(services.submits, "submit", broken)  # raised before answering: 500
    assert client.post("/v1/jobs", json=IRIS).status_code == 500

    def fails(**_: object) -> None:
        raise RuntimeError("boom")

    monkeypatch.setattr(services.store, "get", fails)
    assert client.get("/v1/jobs/nope").status_code == 500
    assert answers(client) == {"1xx": 0, "2xx": 7, "3xx": 0, "4xx": 3, "5xx": 2}
