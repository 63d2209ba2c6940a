"""Backfill: the jobs behind a queued job that fits a node but not the room free now start
in the room it leaves, until it has waited ``backfill_seconds``; from then on the room it
needs is held for it. With the queue and Ray faked (``test_dispatcher_memory``'s fakes)
and the dispatcher's clock injected."""

from __future__ import annotations

from typing import Any

from core.memory import GiB
from core.spec import parse_spec
from tests.unit.workers.test_dispatcher_memory import Job, dispatcher, memory_of
from workers.dispatcher import Demand, DispatcherConfig

SMALL = {"dataset": "iris", "model": {"hidden": [8]}}
NODE = Demand(4, 0, 16 * GiB)


def spec(cpus: float) -> dict[str, Any]:
    return parse_spec({**SMALL, "resources": {"cpus": cpus}}).model_dump(mode="json")


def test_jobs_behind_a_head_waiting_for_room_run_and_the_head_starts_once_room_appears() -> None:
    """A 2-CPU head while 1 CPU is free: the 1-CPU jobs behind it run at once; the head
    says it waits for room, and starts as soon as 2 CPUs are free (before the job behind)."""
    room = {"free": Demand(1, 0, 16 * GiB)}
    d, store = dispatcher([Job("head", spec(2)), Job("a", spec(1)), Job("b", spec(1))],
                          room["free"], NODE)  # fmt: skip
    d.capacity = lambda: (room["free"], NODE)  # type: ignore[method-assign]
    d.launch()
    assert list(d.inflight) == ["a"]  # the room left after "a" is none: "b" waits too
    assert [j.id for j in store.queued] == ["head", "b"]
    mem = memory_of(spec(2))
    assert store.reasons["head"] == (
        f"waiting for resources: needs 2 CPU / 0 GPU / {_size(mem)} memory, "
        f"1 CPU / 0 GPU / 16 GiB memory free"
    )
    room["free"] = Demand(2, 0, 16 * GiB)  # "a" ended
    d.launch()
    assert list(d.inflight) == ["a", "head"]  # the head first: "b" still waits
    assert [j.id for j in store.queued] == ["b"]


def test_a_head_that_waited_past_the_backfill_window_holds_its_room() -> None:
    clock = [100.0]
    free = Demand(1, 0, 16 * GiB)
    d, store = dispatcher([Job("head", spec(2)), Job("a", spec(1)), Job("b", spec(1))], free, NODE)
    d.config = DispatcherConfig(worker=d.config.worker, backfill_seconds=30.0)
    d.clock = lambda: clock[0]
    d.launch()
    assert list(d.inflight) == ["a"]  # backfilled: the head has not waited yet
    clock[0] += 30.0
    d.capacity = lambda: (free, NODE)  # type: ignore[method-assign]
    d.launch()  # the head has waited 30 s: its 2 CPUs are held, "b" may not take the 1 free
    assert list(d.inflight) == ["a"]
    assert store.reasons["head"].endswith("; held for it: it waited past the 30 s backfill window")
    # "b" has waited as long, for room too; its reason, unlike the first's, leaves out what
    # is free (it would change with every job that starts or ends)
    assert store.reasons["b"] == (
        f"waiting for resources: needs {_needs(spec(1))}; "
        "held for it: it waited past the 30 s backfill window"
    )


def test_a_held_head_leaves_the_kinds_it_does_not_lack_to_jobs_behind_it() -> None:
    """A GPU job past the window holds a GPU and its CPU; a CPU job behind it still runs in
    the CPUs it does not need."""
    clock = [0.0]
    gpu = parse_spec({**SMALL, "resources": {"gpus": 1}}).model_dump(mode="json")
    node = Demand(4, 1, 16 * GiB)
    d, store = dispatcher([Job("gpu", gpu), Job("cpu", spec(1))], Demand(4, 0, 16 * GiB), node)
    d.clock = lambda: clock[0]
    d.launch()
    clock[0] += d.config.backfill_seconds
    store.queued.append(Job("cpu2", spec(1)))
    d.launch()
    assert list(d.inflight) == ["cpu", "cpu2"] and [j.id for j in store.queued] == ["gpu"]


def _needs(job: dict[str, Any]) -> str:
    return f"1 CPU / 0 GPU / {_size(memory_of(job))} memory"


def _size(n: int) -> str:
    from core.memory import size

    return size(n)
