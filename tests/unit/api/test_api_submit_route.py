"""``POST /v1/jobs`` reads its two parameters itself (``api.routes.submit.SubmitRoute``):
every answer must be the one FastAPI's dependency solving gives for the same request.

Each case runs against two apps on one database: the app as built, whose route reads the
tenant and the ``Idempotency-Key`` itself (counted, so a case that FastAPI's handler answered
is caught), and the same app with a dependency override of ``get_tenant`` by itself, which
sends the route through FastAPI's dependency solving (counted too). Answers are compared
whole, but for what differs between two jobs (id, times, links)."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Annotated, Any

import pytest
from fastapi import APIRouter, Depends, Request
from fastapi.security import HTTPAuthorizationCredentials
from fastapi.testclient import TestClient

from api.deps import bearer, get_tenant
from api.main import create_app
from api.routes import submit
from api.settings import Settings
from db.keys import KeyStore
from db.session import make_engine

IRIS = {"dataset": "iris", "model": {"hidden": [8]}, "optimizer": {"epochs": 2}}
VOLATILE = {"id", "created_at", "updated_at", "links", "queue_position", "pending_reason"}
HEADERS = ("content-type", "www-authenticate", "retry-after", "location")


class Pair:
    """The app as built and the same app through FastAPI's dependency solving."""

    def __init__(self, settings: Settings, reads: list[int]) -> None:
        self.reads = reads  # POST /v1/jobs whose parameters the route read itself
        self.solved = 0  # tenants FastAPI solved for the reference app
        self.app = create_app(settings)
        self.reference = create_app(settings)

        async def solved_tenant(
            request: Request,
            credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(bearer)],
        ) -> str:
            self.solved += 1
            return await get_tenant(request, credentials)

        self.reference.dependency_overrides[get_tenant] = solved_tenant
        self.own = TestClient(self.app, raise_server_exceptions=False)
        self.route = TestClient(self.reference, raise_server_exceptions=False)

    def __enter__(self) -> Pair:
        self.own.__enter__()
        self.route.__enter__()
        return self

    def __exit__(self, *exc: object) -> None:  # last started, first stopped
        self.route.__exit__(None, None, None)
        self.own.__exit__(None, None, None)

    def both(self, *, refused_early: bool = False, **request: Any) -> tuple[int, dict[str, Any]]:
        """POST /v1/jobs through each; asserts the two answers agree and returns one.
        ``refused_early``: the body limit answers before either route runs."""
        reads, solved = self.reads[0], self.solved
        a = self.own.post("/v1/jobs", **request)
        assert self.reads[0] == reads + (not refused_early), "the route did not read them"
        b = self.route.post("/v1/jobs", **request)
        assert self.solved == solved + (not refused_early), "FastAPI did not solve them"
        assert self.reads[0] == reads + (not refused_early)
        assert a.status_code == b.status_code, (a.text, b.text)
        assert {h: a.headers.get(h) for h in HEADERS} == {h: b.headers.get(h) for h in HEADERS}
        assert _stable(a.json()) == _stable(b.json())
        return a.status_code, a.json()


def _stable(body: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in body.items() if k not in VOLATILE}


@pytest.fixture
def reads(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """Counts the calls of ``submit_request``: the route reading its parameters itself."""
    count = [0]
    inner = submit.submit_request

    async def counted(request: Request) -> Any:
        count[0] += 1
        return await inner(request)

    monkeypatch.setattr(submit, "submit_request", counted)
    return count


@pytest.fixture
def pair(make_settings: Callable[..., Settings], reads: list[int]) -> Iterator[Callable[..., Pair]]:
    made: list[Pair] = []

    def make(**overrides: Any) -> Pair:
        made.append(Pair(make_settings(**overrides), reads).__enter__())
        return made[-1]

    yield make
    for p in reversed(made):  # last started, first stopped
        p.__exit__()


def test_submits_replays_and_conflicts_answer_alike(pair: Callable[..., Pair]) -> None:
    p = pair()
    status, body = p.both(json=IRIS)
    assert status == 201 and body["status"] == "queued" and body["spec"]["dataset"]["name"]
    key = {"Idempotency-Key": "k" * 200}  # the longest key
    first = p.own.post("/v1/jobs", json=IRIS, headers=key)
    assert first.status_code == 201
    again = p.own.post("/v1/jobs", json=IRIS, headers=key)
    assert (again.status_code, again.json()["id"]) == (200, first.json()["id"])
    status, body = p.both(json=IRIS, headers=key)  # a replay in each
    assert status == 200
    other = {**IRIS, "seed": 7}
    status, body = p.both(json=other, headers=key)
    assert (status, body["error"]["field"]) == (409, "Idempotency-Key")
    assert first.json()["id"] in body["error"]["message"]


@pytest.mark.parametrize(
    ("request_", "status", "field"),
    [
        ({"json": {"dataset": "iris", "model": {"hidden": [0]}}}, 422, "model.hidden[0]"),
        ({"json": {"model": {"hidden": [8]}}}, 422, "dataset"),
        ({"content": b"{not json", "headers": {"content-type": "application/json"}}, 400, None),
        ({"content": b"   ", "headers": {"content-type": "application/json"}}, 400, None),
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
    for headers in (
        {},
        {"Authorization": "Basic abc"},
        {"Authorization": "Bearer "},
        {"Authorization": f"Bearer {revoked}"},
        {"Authorization": "", "Idempotency-Key": "x" * 201},  # the API key comes first
    ):
        status, body = p.both(json=IRIS, headers=headers)
        assert (status, body["error"]["field"]) == (401, "Authorization"), headers
    ok = {"Authorization": f"bearer {key}"}  # the scheme in any case
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


def test_other_paths_and_methods_go_to_their_routes(pair: Callable[..., Pair]) -> None:
    p = pair()
    reads = p.reads[0]
    assert p.own.get("/v1/jobs").status_code == 200
    assert p.own.put("/v1/jobs", json=IRIS).status_code == 405
    job = p.own.post("/v1/jobs/", json=IRIS, follow_redirects=True)  # FastAPI's redirect
    assert job.status_code == 201
    assert p.reads[0] == reads + 1  # only the redirected POST /v1/jobs


def test_a_dependency_added_to_the_route_is_solved(
    make_client: Callable[..., TestClient], reads: list[int]
) -> None:
    """A route with a dependency it does not read itself answers through FastAPI's
    handler, which solves that dependency too."""
    calls: list[str] = []

    async def audit(request: Request) -> None:
        calls.append(request.method)

    client = make_client()
    routes = client.app.router.routes  # type: ignore[attr-defined]
    index = next(i for i, r in enumerate(routes) if isinstance(r, submit.SubmitRoute))
    audited = APIRouter(dependencies=[Depends(audit)])
    submit.add_route(audited)
    routes[index] = audited.routes[0]
    r = client.post("/v1/jobs", json=IRIS)
    assert (r.status_code, calls, reads[0]) == (201, ["POST"], 0)
    r = client.post("/v1/jobs", json={"dataset": "nope"})
    assert (r.status_code, r.json()["error"]["field"], calls) == (422, "dataset.name", ["POST"] * 2)
