"""Concurrent submits share transactions (api/group_commit.py) and keep every guarantee:
one job per idempotency key, the quota, one answer per request."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient

from api.group_commit import GroupCommit
from core.spec import parse_spec
from db.errors import QueueFull, StoreError, StoreUnavailable
from db.migrate import upgrade
from db.session import make_engine
from db.store import JobStore
from db.submits import SubmitRequest
from db.views import Submitted

IRIS = {"dataset": "iris", "model": {"hidden": [8]}, "optimizer": {"epochs": 3}}


def post_all(client: TestClient, n: int, **kwargs: Any) -> list[Any]:
    with ThreadPoolExecutor(n) as pool:
        return list(pool.map(lambda _: client.post("/v1/jobs", json=IRIS, **kwargs), range(n)))


def test_concurrent_submits_each_get_their_job_and_place(client: TestClient) -> None:
    answers = post_all(client, 40)
    assert [r.status_code for r in answers] == [201] * 40
    jobs = [r.json() for r in answers]
    assert len({j["id"] for j in jobs}) == 40
    assert sorted(j["queue_position"] for j in jobs) == list(range(40))  # an empty queue
    for j in jobs[:5]:
        shown = client.get(f"/v1/jobs/{j['id']}").json()
        assert shown["queue_position"] == j["queue_position"]
        assert shown == {**j, "queue_position": shown["queue_position"]}


def test_one_key_sent_concurrently_makes_one_job(client: TestClient) -> None:
    answers = post_all(client, 20, headers={"Idempotency-Key": "same"})
    codes = sorted(r.status_code for r in answers)
    assert codes == [200] * 19 + [201]
    assert len({r.json()["id"] for r in answers}) == 1


def test_the_quota_holds_under_concurrency(make_client: Callable[..., TestClient]) -> None:
    client = make_client(max_queued_per_tenant=5)
    answers = post_all(client, 12)
    codes = sorted(r.status_code for r in answers)
    assert codes == [201] * 5 + [429] * 7
    refused = next(r for r in answers if r.status_code == 429)
    assert refused.json()["error"]["code"] == "too_many_queued"
    assert refused.headers["Retry-After"] == "10"


class FlakyStore:
    """A store whose group fails as a whole when it holds a job named "bad" (as a value the
    database refuses would), and answers the others."""

    def __init__(self) -> None:
        self.groups: list[list[str]] = []

    def submit_many(
        self, requests: list[SubmitRequest], *, max_queued: int | None
    ) -> list[Submitted | StoreError]:
        names = [r.spec.name for r in requests]
        self.groups.append(names)
        if "bad" in names:
            raise ValueError("refused by the database")
        return [QueueFull(r.tenant, 1, 1) if r.spec.name == "full" else _ok(r) for r in requests]


def _ok(r: SubmitRequest) -> Submitted:
    return Submitted(job=r.spec.name, position=0)  # type: ignore[arg-type]


def test_a_failing_group_is_retried_one_by_one() -> None:
    store = FlakyStore()
    commit = GroupCommit(store, max_queued=None)  # type: ignore[arg-type]
    names = ["a", "bad", "full", "b"]

    async def main() -> list[Any]:
        calls = [
            commit.submit(SubmitRequest(parse_spec({"dataset": "iris", "name": n}))) for n in names
        ]
        return await asyncio.gather(*calls, return_exceptions=True)

    try:
        a, bad, full, b = asyncio.run(main())
    finally:
        commit.close()
    assert (a.job, b.job) == ("a", "b")
    assert isinstance(bad, ValueError) and isinstance(full, QueueFull)
    assert store.groups[0] == names  # one group first, then each alone
    assert sorted(map(tuple, store.groups[1:])) == [("a",), ("b",), ("bad",), ("full",)]


@pytest.mark.parametrize("n", [1, 3])
def test_a_lone_submit_is_not_held_back(n: int) -> None:
    store = FlakyStore()
    commit = GroupCommit(store, max_queued=None)  # type: ignore[arg-type]

    async def main() -> None:
        for _ in range(n):  # one after another: each is its own group at once
            await commit.submit(SubmitRequest(parse_spec({"dataset": "iris", "name": "x"})))

    try:
        asyncio.run(main())
    finally:
        commit.close()
    assert store.groups == [["x"]] * n


class LostCommitStore(JobStore):
    """A real store whose first group commits and then raises, as when the connection drops
    during COMMIT: the jobs are stored, the writer cannot know it."""

    def __init__(self, engine: Any) -> None:
        super().__init__(engine)
        self.groups: list[int] = []

    def submit_many(self, requests: Any, **kwargs: Any) -> list[Submitted | StoreError]:
        answers = super().submit_many(requests, **kwargs)
        self.groups.append(len(requests))
        if len(self.groups) == 1:
            raise StoreUnavailable("server closed the connection unexpectedly")
        return answers


def test_a_group_whose_commit_went_through_unseen_stores_each_job_once(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path}/gradq.db"
    upgrade(url)
    engine = make_engine(url)
    store = LostCommitStore(engine)
    commit = GroupCommit(store, max_queued=None)
    names = ["a", "b", "c"]

    async def main() -> list[Any]:
        calls = [
            commit.submit(SubmitRequest(parse_spec({"dataset": "iris", "name": n}))) for n in names
        ]
        return await asyncio.gather(*calls, return_exceptions=True)

    try:
        answers = asyncio.run(main())
        stored, _ = store.list(limit=100)
    finally:
        commit.close()
        engine.dispose()
    assert store.groups[0] == 3  # one group, its commit's outcome unknown to the writer
    assert sorted(j.name for j in stored) == names  # each job once
    assert all(isinstance(a, Submitted) for a in answers)
    assert sorted(a.job.id for a in answers) == sorted(j.id for j in stored)
    assert all(a.job.created and a.position is not None for a in answers)
