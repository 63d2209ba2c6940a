"""The dispatcher replaces a local Ray it started when that Ray's raylet or GCS server exits,
and ``gradq serve``'s Ray probe says so meanwhile; Ray's node, its shutdown and start, and the
store are faked (the real ones: tests/chaos/test_chaos_serve.py)."""

from __future__ import annotations

import signal
import threading
from dataclasses import dataclass, field
from typing import Any

import pytest

import workers.dispatcher
from db.states import JobStatus
from workers import probes
from workers.dispatcher import NOTHING, Attempt, Dispatcher, DispatcherConfig
from workers.task import WorkerConfig


@dataclass
class FakeNode:
    """A local Ray node: the daemons that have exited, as ``Node.dead_processes`` lists them."""

    dead: list[str] = field(default_factory=list)

    def dead_processes(self) -> list[tuple[str, Any]]:
        return [(kind, None) for kind in self.dead]


@dataclass
class FakeStore:
    released: list[tuple[str, int, str]] = field(default_factory=list)

    def release(self, *, job_id: str, attempt: int, why: str) -> JobStatus:
        self.released.append((job_id, attempt, why))
        return JobStatus.QUEUED


@dataclass
class FakeRay:
    """Ray's shutdown, and the dispatcher's start of a new local Ray (failing ``fail`` times)."""

    dispatcher: Dispatcher
    fail: int = 0
    shutdowns: int = 0
    starts: int = 0

    def shutdown(self) -> None:
        self.shutdowns += 1

    def start(self) -> None:
        self.starts += 1
        signal.signal(signal.SIGTERM, signal.SIG_DFL)  # as ray.init sets its own
        if self.fail:
            self.fail -= 1
            raise RuntimeError("ray.init failed")
        self.dispatcher._own_node = FakeNode()


@pytest.fixture
def local(monkeypatch: pytest.MonkeyPatch) -> tuple[Dispatcher, FakeStore, FakeRay]:
    store = FakeStore()
    config = DispatcherConfig(worker=WorkerConfig(database_url="sqlite://", tracking_uri="x"))
    d = Dispatcher(config, store)  # type: ignore[arg-type]
    d._own_node = FakeNode()
    fake = FakeRay(d)
    import ray

    monkeypatch.setattr(ray, "shutdown", fake.shutdown)
    monkeypatch.setattr(d, "_start_ray", fake.start)
    for step in ("reap", "launch"):
        monkeypatch.setattr(d, step, lambda: None)
    d._last_requeue = d._last_stop_check = float("inf")  # no settling or stop checks
    return d, store, fake


def job(job_id: str, attempt: int) -> Any:
    return type("Claimed", (), {"id": job_id, "attempt": attempt})()


def test_a_running_local_ray_is_left_alone(local: tuple[Dispatcher, FakeStore, FakeRay]) -> None:
    d, store, fake = local
    d._own_node.dead = ["log_monitor"]  # not a daemon jobs need
    d.tick()
    assert d.local_ray_down() is None
    assert (fake.shutdowns, fake.starts, store.released) == (0, 0, [])


def test_a_dead_raylet_has_the_local_ray_replaced_and_its_attempts_settled(
    local: tuple[Dispatcher, FakeStore, FakeRay],
) -> None:
    d, store, fake = local
    d.inflight["job-1"] = Attempt(job("job-1", 2), "ref", NOTHING, 0.0)
    d._own_node.dead = ["raylet"]
    assert d.local_ray_down() == "the local Ray is restarting: its raylet exited"
    ours = signal.signal(signal.SIGTERM, lambda *_: None)
    try:
        d.tick()
        assert signal.getsignal(signal.SIGTERM) is not signal.SIG_DFL  # the process's stays
    finally:
        signal.signal(signal.SIGTERM, ours)
    assert store.released == [("job-1", 2, "RayDied: its raylet exited")]
    assert d.inflight == {}
    assert (fake.shutdowns, fake.starts) == (1, 1)
    assert d.local_ray_down() is None  # the new node runs


def test_a_failed_restart_is_tried_again_and_reported_meanwhile(
    local: tuple[Dispatcher, FakeStore, FakeRay],
) -> None:
    d, _, fake = local
    d._own_node.dead = ["gcs_server", "raylet"]
    fake.fail = 1
    with pytest.raises(RuntimeError, match=r"ray.init failed"):
        d.tick()
    why = "the local Ray is restarting: its gcs_server and raylet exited"
    assert d._own_node is None and d.local_ray_down() == why
    probe = probes.local_ray(threading.current_thread(), d.local_ray_down)
    with pytest.raises(RuntimeError) as raised:
        probe()
    assert str(raised.value) == why
    d.tick()
    assert (fake.shutdowns, fake.starts) == (2, 2)
    assert d.local_ray_down() is None


def test_only_a_local_ray_started_here_is_watched(monkeypatch: pytest.MonkeyPatch) -> None:
    import ray
    import ray._private.worker

    node = FakeNode()
    monkeypatch.setattr(ray, "is_initialized", lambda: False)
    monkeypatch.setattr(ray, "init", lambda **options: None)
    monkeypatch.setattr(ray, "remote", lambda **options: lambda function: function)
    monkeypatch.setattr(workers.dispatcher, "start_board", lambda: None)
    monkeypatch.setattr(ray._private.worker, "_global_node", node)
    worker = WorkerConfig(database_url="sqlite://", tracking_uri="x")
    for address, watched in ((None, node), ("127.0.0.1:6379", None)):
        config = DispatcherConfig(worker=worker, ray_address=address, warm_workers=0)
        d = Dispatcher(config, FakeStore())  # type: ignore[arg-type]
        d._start_ray()
        assert d._own_node is watched
