"""``POST /v1/jobs`` is answered before FastAPI's layers (``api.fast_submit``): every answer
must be the one the FastAPI route gives for the same request, errors included.

Each case runs against two apps on one database: the app as built (its fast path, counted,
so a case that fell through to FastAPI is caught) and the same app entered through
``FastAPI.__call__`` (its documented route). Answers are compared whole, but for what differs
between two jobs (id, times, links)."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from fastapi import FastAPI
from fastapi.testclient import TestClient
from starlette.types import Receive, Scope, Send

from api.fast_submit import GradqApp
from api.main import create_app
from api.settings import Settings
from db.keys import KeyStore
from db.migrate import upgrade
from db.session import make_engine

IRIS = {"dataset": "iris", "model": {"hidden": [8]}, "optimizer": {"epochs": 2}}
VOLATILE = {"id", "created_at", "updated_at", "links", "queue_position", "pending_reason"}
HEADERS = ("content-type", "www-authenticate", "retry-after")


class Pair:
    """The fast path and the FastAPI route of two apps with the same settings."""

    def __init__(self, settings: Settings) -> None:
        self.app = create_app(settings)
        assert isinstance(self.app, GradqApp)
        self.fast_calls = 0
        inner = self.app._fast_submit.app

        async def counted(scope: Scope, receive: Receive, send: Send) -> None:
            self.fast_calls += 1
            await inner(scope, receive, send)

        self.app._fast_submit.app = counted
        reference = create_app(settings)

        async def through_fastapi(scope: Scope, receive: Receive, send: Send) -> None:
            await FastAPI.__call__(reference, scope, receive, send)

        self.fast = TestClient(self.app, raise_server_exceptions=False)
        self.route = TestClient(through_fastapi, raise_server_exceptions=False)
        self.reference = reference

    def __enter__(self) -> Pair:
        self.fast.__enter__()
        self.route.__enter__()
        return self

    def __exit__(self, *exc: object) -> None:
        self.fast.__exit__(None, None, None)
        self.route.__exit__(None, None, None)

    def both(self, *, refused_early: bool = False, **request: Any) -> tuple[int, dict[str, Any]]:
        """POST /v1/jobs through each; asserts the two answers agree and returns one.
        ``refused_early``: the fast path's body limit answers before its handler runs."""
        calls = self.fast_calls
        a = self.fast.post("/v1/jobs", **request)
        assert self.fast_calls == calls + (not refused_early), "the fast path did not answer"
        b = self.route.post("/v1/jobs", **request)
        assert a.status_code == b.status_code, (a.text, b.text)
        assert {h: a.headers.get(h) for h in HEADERS} == {h: b.headers.get(h) for h in HEADERS}
        assert _stable(a.json()) == _stable(b.json())
        return a.status_code, a.json()


def _stable(body: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in body.items() if k not in VOLATILE}


@pytest.fixture
def pair(tmp_path: Path) -> Iterator[Callable[..., Pair]]:
    db_url = f"sqlite:///{tmp_path}/gradq.db"
    upgrade(db_url)
    made: list[Pair] = []

    def make(**overrides: Any) -> Pair:
        values: dict[str, Any] = {
            "database_url": db_url,
            "mlflow_tracking_uri": f"sqlite:///{tmp_path}/mlflow.db",
            **overrides,
        }
        settings = Settings(**values)
        made.append(Pair(settings).__enter__())
        return made[-1]

    yield make
    for p in made:
        p.__exit__()


def test_submits_replays_and_conflicts_answer_alike(pair: Callable[..., Pair]) -> None:
    p = pair()
    status, body = p.both(json=IRIS)
    assert status == 201 and body["status"] == "queued" and body["spec"]["dataset"]["name"]
    first = p.fast.post("/v1/jobs", json=IRIS, headers={"Idempotency-Key": "k1"})
    assert first.status_code == 201
    again = p.fast.post("/v1/jobs", json=IRIS, headers={"Idempotency-Key": "k1"})
    assert (again.status_code, again.json()["id"]) == (200, first.json()["id"])
    other = {**IRIS, "seed": 7}
    status, body = p.both(json=other, headers={"Idempotency-Key": "k1"})
    assert (status, body["error"]["field"]) == (409, "Idempotency-Key")
    assert first.json()["id"] in body["error"]["message"]


@pytest.mark.parametrize(
    ("request_", "status", "field"),
    [
        ({"json": {"dataset": "iris", "model": {"hidden": [0]}}}, 422, "model.hidden[0]"),
        ({"json": {"model": {"hidden": [8]}}}, 422, "dataset"),
        ({"content": b"{not json", "headers": {"content-type": "application/json"}}, 400, None),
        ({"content": b"   "}, 400, None),
        ({"json": [1, 2]}, 422, "(root)"),
        ({"json": IRIS, "headers": {"Idempotency-Key": "x" * 201}}, 422, "Idempotency-Key"),
        ({"json": {**IRIS, "optimizer": {"epochs": 10**6}}}, 422, "optimizer.epochs"),
    ],
)
def test_bad_input_answers_alike(
    pair: Callable[..., Pair], request_: dict[str, Any], status: int, field: str | None
) -> None:
    got, body = pair().both(**request_)
    assert (got, body["error"]["field"]) == (status, field)


def test_keys_quota_and_body_limit_answer_alike(pair: Callable[..., Pair], tmp_path: Path) -> None:
    keys = KeyStore(make_engine(f"sqlite:///{tmp_path}/gradq.db"))
    _, key = keys.create(tenant="a")
    revoked_id, revoked = keys.create(tenant="b")
    keys.revoke(key_id=revoked_id)
    p = pair(auth="keys", max_queued_per_tenant=2, max_body_bytes=2000)
    for headers in ({}, {"Authorization": "Basic abc"}, {"Authorization": f"Bearer {revoked}"}):
        status, body = p.both(json=IRIS, headers=headers)
        assert (status, body["error"]["field"]) == (401, "Authorization"), headers
    ok = {"Authorization": f"Bearer {key}"}
    status, body = p.both(json=IRIS, headers=ok)  # a's two queued jobs: the quota is full
    assert (status, body["tenant"]) == (201, "a")
    status, body = p.both(json=IRIS, headers=ok)
    assert (status, body["error"]["code"]) == (429, "too_many_queued")
    big = {**IRIS, "name": "n" * 3000}
    status, body = p.both(json=big, headers=ok, refused_early=True)
    assert (status, body["error"]["code"]) == (413, "payload_too_large")


def test_an_unexpected_error_and_a_database_away_answer_alike(
    pair: Callable[..., Pair], monkeypatch: pytest.MonkeyPatch
) -> None:
    p = pair()

    async def broken(*_: object) -> None:
        raise RuntimeError("boom")

    for app in (p.app, p.reference):
        monkeypatch.setattr(app.state.services.submits, "submit", broken)
    status, body = p.both(json=IRIS)
    assert (status, body["error"]["code"]) == (500, "internal")
    assert "boom" not in str(body)
    away = pair(database_url="postgresql+psycopg://nobody@127.0.0.1:9/none")
    status, body = away.both(json=IRIS)
    assert (status, body["error"]["code"]) == (503, "database_unavailable")


def test_other_paths_and_methods_go_through_fastapi(pair: Callable[..., Pair]) -> None:
    p = pair()
    calls = p.fast_calls
    assert p.fast.get("/v1/jobs").status_code == 200
    assert p.fast.put("/v1/jobs", json=IRIS).status_code == 405
    job = p.fast.post("/v1/jobs/", json=IRIS, follow_redirects=True)  # FastAPI's redirect
    assert job.status_code == 201
    assert p.fast_calls == calls + 1  # only the redirected POST /v1/jobs
