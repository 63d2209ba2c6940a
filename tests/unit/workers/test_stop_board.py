"""The stop signal's parts alone: the board's bookkeeping (plain asyncio, no Ray) and the
dispatcher's reading and pushing of stops, with the store, the board and Ray's cancel faked
(the real ones: tests/integration/workers/test_stop_signal.py, tests/integration/db/
test_db_stops.py)."""

from __future__ import annotations

import asyncio
from concurrent.futures import Future
from dataclasses import dataclass, field
from typing import Any

import pytest

from db.states import StopReason
from db.views import StopRequest
from workers.dispatcher import NOTHING, Attempt, Dispatcher, DispatcherConfig
from workers.stops import StopBoard, _heard, listen
from workers.task import WorkerConfig


def test_the_board_answers_a_waiting_attempt_with_the_first_reason() -> None:
    async def scenario() -> list[Any]:
        board = StopBoard()
        waiting = asyncio.ensure_future(board.wait("a", 1))
        other = asyncio.ensure_future(board.wait("a", 2))  # another attempt of the job
        await asyncio.sleep(0)
        assert not waiting.done()
        await board.stop("a", 1, "pruned")
        await board.stop("a", 1, "cancel")  # the first stop stands
        first = await waiting
        again = await board.wait("a", 1)  # a late wait is answered at once
        await board.stop("b", 1, "cancel")  # before the attempt waits
        early = await board.wait("b", 1)
        kept = await board.attempts()
        await board.forget("a", 2)  # the attempt ended unstopped: its wait answers None
        released = await other
        for job in ("a", "b"):
            await board.forget(job, 1)
        return [first, again, early, kept, released, await board.attempts()]

    assert asyncio.run(scenario()) == ["pruned", "pruned", "cancel", 3, None, 0]


@dataclass
class FakeStore:
    requests: list[StopRequest]
    asked: list[str | None] = field(default_factory=list)

    def stop_requests(self, *, owner: str | None = None) -> list[StopRequest]:
        self.asked.append(owner)
        return self.requests


@dataclass
class FakeMethod:
    calls: list[tuple[Any, ...]] = field(default_factory=list)

    def remote(self, *args: Any) -> None:
        self.calls.append(args)


@dataclass
class FakeBoard:
    stop: FakeMethod = field(default_factory=FakeMethod)
    forget: FakeMethod = field(default_factory=FakeMethod)


def dispatcher(store: FakeStore, grace: float) -> Dispatcher:
    worker = WorkerConfig(database_url="sqlite://", tracking_uri="x")
    d = Dispatcher(DispatcherConfig(worker=worker, owner="d1", stop_grace_seconds=grace), store)  # type: ignore[arg-type]
    d.board = FakeBoard()
    for job_id, attempt in (("a", 1), ("b", 2), ("c", 1)):
        claimed = type("Claimed", (), {"id": job_id, "attempt": attempt})()
        d.inflight[job_id] = Attempt(claimed, f"ref-{job_id}", NOTHING, 0.0)  # type: ignore[arg-type]
    return d


REQUESTS = [
    StopRequest("a", 1, StopReason.PRUNED),
    StopRequest("b", 1, StopReason.CANCEL),  # an earlier attempt's: not the one running
    StopRequest("x", 1, StopReason.CANCEL),  # not an attempt of this dispatcher
]


def test_one_query_reads_every_stop_and_each_is_pushed_once() -> None:
    store = FakeStore(REQUESTS)
    d = dispatcher(store, grace=600)
    d.signal_stops()
    d.signal_stops()
    assert store.asked == ["d1", "d1"]  # one query a check, for all the running attempts
    assert d.board.stop.calls == [("a", 1, "pruned")]
    d.inflight.clear()
    d.signal_stops()
    assert store.asked == ["d1", "d1"]  # nothing running: no query


def test_an_attempt_still_running_after_the_grace_is_killed_once(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    import ray

    killed: list[tuple[Any, bool]] = []
    monkeypatch.setattr(ray, "cancel", lambda ref, force: killed.append((ref, force)))
    d = dispatcher(FakeStore(REQUESTS), grace=-1)
    d.signal_stops()
    assert killed == []  # signalled first
    d.signal_stops()
    d.signal_stops()
    assert killed == [("ref-a", True)]


class Unreachable:
    """A board whose actor is gone: every call raises."""

    def __getattr__(self, name: str) -> Any:
        raise RuntimeError("the actor died")


def test_a_board_that_cannot_be_reached_leaves_the_stop_to_the_heartbeat(
    caplog: pytest.LogCaptureFixture,
) -> None:
    heard: list[str] = []
    listen(None, "a", 1, heard.append)  # no board: nothing to wait on
    listen(Unreachable(), "a", 1, heard.append)
    lost: Future[Any] = Future()
    lost.set_exception(RuntimeError("the actor died"))
    _heard(lost, "a", heard.append)
    forgotten: Future[Any] = Future()
    forgotten.set_result(None)
    _heard(forgotten, "a", heard.append)
    assert heard == []
    assert caplog.text.count("a stop comes with the heartbeat") == 2
    d = dispatcher(FakeStore(REQUESTS), grace=600)
    d.board = Unreachable()
    d.signal_stops()  # the dispatcher's tick goes on
    assert d.inflight["a"].stop_seen is not None
