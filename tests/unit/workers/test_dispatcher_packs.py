"""How the dispatcher forms packs of a sweep's trials (``Dispatcher.units``) and what a pack
reserves, with the queue and Ray's tasks faked (the real ones: tests/integration/workers/
test_sweeps.py, test_pack.py)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import pytest
from test_dispatcher_memory import FakeRemote, FakeStore, Job

from core.memory import GiB, estimate, pack_estimate
from core.spec import parse_spec
from core.sweep import parse_sweep, trial_spec
from db.sweeps import trial_job_id
from workers.dispatcher import Demand, Dispatcher, DispatcherConfig
from workers.task import WorkerConfig

ROOM = Demand(16, 0, 64 * GiB)


class Remote(FakeRemote):
    """A fake Ray remote function whose every launch is a task of its own."""

    def remote(self, *args: Any) -> Any:
        super().remote(*args)
        return object()


def trial(n: int, sweep: str = "s1", pack: bool = True, **over: Any) -> dict[str, Any]:
    spec: dict[str, Any] = {
        "dataset": {"name": "digits", "seed": 0},
        "model": {"hidden": [16]},
        "optimizer": {"lr": 0.01 * (n + 1)},
        "seed": n,
        "trial": {"sweep_id": sweep, "number": n, "metric": "val_loss", "mode": "min",
                  "pack": pack},
    }  # fmt: skip
    spec.update(over)
    return parse_spec(spec).model_dump(mode="json")


class NotingStore(FakeStore):
    """The fake queue, keeping the note each claim was made with."""

    notes: dict[str, str | None]

    def claim(
        self,
        *,
        owner: str,
        limit: int,
        ids: list[str],
        lease_seconds: float,
        note: str | None = None,
    ) -> list[Job]:
        claimed = super().claim(owner=owner, limit=limit, ids=ids, lease_seconds=lease_seconds)
        self.notes.update(dict.fromkeys((j.id for j in claimed), note))
        return claimed


class Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def dispatcher(
    jobs: list[Job], room: Demand = ROOM, **config: Any
) -> tuple[Dispatcher, NotingStore, Remote, Remote, Clock]:
    store = NotingStore(jobs)
    store.notes = {}
    worker = WorkerConfig(database_url="sqlite://", tracking_uri="x")
    d = Dispatcher(DispatcherConfig(worker=worker, **config), store)  # type: ignore[arg-type]
    alone, packs = Remote(), Remote()
    d._remote, d._remote_pack = alone, packs
    d.capacity = lambda: (room, room)  # type: ignore[method-assign]
    clock = d.clock = Clock()
    return d, store, alone, packs, clock


def launched(d: Dispatcher) -> list[list[str]]:
    """The Ray tasks started, each as the ids of its jobs."""
    tasks: dict[Any, list[str]] = {}
    for job_id, a in d.inflight.items():
        tasks.setdefault(a.ref, []).append(job_id)
    return sorted(tasks.values())


def test_a_sweeps_trials_of_one_shape_start_as_one_pack_once_their_group_stops_growing() -> None:
    jobs = [Job(f"t{n}", trial(n)) for n in range(3)]
    d, store, alone, packs, clock = dispatcher(jobs, room=Demand(1, 0, 64 * GiB))
    d.launch()  # first seen: the sweep may still be queueing trials
    assert d.inflight == {}
    store.queued += [Job(f"t{n}", trial(n)) for n in range(3, 5)]
    clock.now += 0.1
    d.launch()  # it grew: it waits until it has not grown for pack_quiet_seconds
    assert d.inflight == {}
    clock.now += 0.2
    d.launch()  # 0.2 s quiet
    assert d.inflight == {}
    clock.now += 0.1
    d.launch()  # 0.3 s quiet
    assert launched(d) == [["t0", "t1", "t2", "t3", "t4"]]
    assert alone.launched == [] and len(packs.launched) == 1
    specs = [parse_spec(trial(n)) for n in range(5)]
    options = packs.launched[0]
    assert options["num_cpus"] == 1.0 and options["memory"] == pack_estimate(specs)
    assert pack_estimate(specs) < 5 * estimate(specs[0]).total  # the data set counted once
    # each member holds its share: together the pack's demand, freed as each one ends
    shares = [d.inflight[f"t{n}"].needs for n in range(5)]
    assert all(s == shares[0] for s in shares)
    assert abs(shares[0].memory * 5 - pack_estimate(specs)) < 1e-3
    assert {d.inflight[f"t{n}"].pack for n in range(5)} == {5}


def test_a_growing_group_waits_no_longer_than_pack_wait_seconds() -> None:
    d, store, _, _, clock = dispatcher([Job("t0", trial(0))], pack_wait_seconds=0.5)
    for n in range(1, 4):  # a trial more at every tick: at 0, 0.2 and 0.4 s it waits
        d.launch()
        assert d.inflight == {}
        store.queued.append(Job(f"t{n}", trial(n)))
        clock.now += 0.2
    d.launch()  # 0.6 s since first seen, still growing: it starts
    assert launched(d) == [["t0", "t1", "t2", "t3"]]


def test_packs_hold_at_most_pack_size_and_only_compatible_trials_of_one_sweep() -> None:
    jobs = [Job(f"a{n}", trial(n)) for n in range(5)]
    jobs += [Job("wide", trial(9, model={"hidden": [32]}))]  # another shape
    jobs += [Job("other", trial(10, sweep="s2"))]  # another sweep
    jobs += [Job("alone", trial(11, pack=False))]  # search.pack: false
    jobs += [Job("autograd", trial(12, engine="autograd"))]
    jobs += [Job("plain", {**trial(13), "trial": None})]  # not a trial
    d, _, alone, packs, clock = dispatcher(jobs, pack_size=2)
    d.launch()
    clock.now += 0.3
    d.launch()
    assert launched(d) == [
        ["a0", "a1"], ["a2", "a3"], ["a4"], ["alone"], ["autograd"], ["other"], ["plain"],
        ["wide"],
    ]  # fmt: skip
    assert len(packs.launched) == 2 and len(alone.launched) == 6


def test_a_pack_is_halved_until_it_fits_the_largest_node_and_the_rest_wait() -> None:
    specs = [parse_spec(trial(n)) for n in range(8)]
    node = Demand(1, 0, pack_estimate(specs[:4]) + 1)  # 4 fit, 5 do not
    jobs = [Job(f"t{n}", trial(n)) for n in range(8)]
    d, store, _, packs, clock = dispatcher(jobs, room=node)
    d.launch()
    clock.now += 0.3
    d.launch()
    assert launched(d) == [["t0", "t1", "t2", "t3"]]
    assert [j.id for j in store.queued] == ["t4", "t5", "t6", "t7"]
    assert packs.launched[0]["memory"] == pack_estimate(specs[:4])


@pytest.mark.parametrize(("cpus", "sizes"), [(1, [32]), (2, [16, 16]), (16, [4] * 8)])
def test_a_group_is_spread_over_the_free_cpus_in_packs_of_at_least_pack_min(
    cpus: int, sizes: list[int]
) -> None:
    """A pack is one task on one CPU: 32 trials on 2 free CPUs train as 2 packs of 16, on
    16 free CPUs as 8 packs of 4 (PACK_MIN), not 16 of 2."""
    jobs = [Job(f"t{n:02d}", trial(n)) for n in range(32)]
    d, _, _, _, clock = dispatcher(jobs, room=Demand(cpus, 0, 64 * GiB))
    d.launch()
    clock.now += 0.3
    d.launch()
    assert [len(unit) for unit in launched(d)] == sizes
    assert sorted(j for unit in launched(d) for j in unit) == [j.id for j in jobs]


def test_on_a_gpu_a_group_stays_one_pack() -> None:
    jobs = [Job(f"t{n:02d}", trial(n, resources={"gpus": 1})) for n in range(32)]
    d, _, _, packs, clock = dispatcher(jobs, room=Demand(16, 1, 64 * GiB))
    d.launch()
    clock.now += 0.3
    d.launch()
    assert [len(unit) for unit in launched(d)] == [32]
    assert packs.launched[0]["num_gpus"] == 1


def test_a_tenants_cap_counts_each_member() -> None:
    jobs = [Job(f"t{n}", trial(n)) for n in range(5)]
    d, store, _, _, clock = dispatcher(jobs, max_running_per_tenant=3)
    d._running_caps = lambda tenants: ({"default": 3}, {"default": 1})  # type: ignore[method-assign]
    d.launch()
    clock.now += 0.3
    d.launch()
    assert launched(d) == [["t0", "t1"]]  # 1 running + 2 members = the cap of 3
    assert [j.id for j in store.queued] == ["t2", "t3", "t4"]


def test_pack_size_1_starts_every_trial_alone() -> None:
    d, _, alone, packs, _ = dispatcher([Job(f"t{n}", trial(n)) for n in range(3)], pack_size=1)
    d.launch()
    assert launched(d) == [["t0"], ["t1"], ["t2"]]
    assert packs.launched == [] and len(alone.launched) == 3


@dataclass
class Queued:
    """What ``units`` reads of a queued job (a ``JobView``'s id, tenant and spec)."""

    id: str
    spec: dict[str, Any]
    tenant: str = "default"
    pending_reason: str | None = None


def trials(sweep_id: str, n: int) -> list[Queued]:
    """Trials 0..n-1 of one sweep, of one shape, in the claim order of jobs submitted in one
    group: by job id."""
    sweep = parse_sweep({
        "base": {"dataset": "iris", "optimizer": {"epochs": 3},
                 "gradcheck": {"at_start": False, "every_steps": 0}},
        "space": {"optimizer.lr": {"grid": [0.01 * (k + 1) for k in range(n)]}},
        "search": {"method": "grid", "trials": n, "parallel": n},
    })  # fmt: skip
    jobs = []
    for number in range(n):
        params = {"optimizer.lr": 0.01 * (number + 1)}
        spec = trial_spec(sweep, sweep_id=sweep_id, number=number, params=params,
                          parent_run_id=None)  # fmt: skip
        jobs.append(Queued(trial_job_id(sweep_id, number), spec.model_dump(mode="json")))
    return sorted(jobs, key=lambda j: j.id)


def test_a_packs_members_are_in_trial_number_order_whatever_their_ids() -> None:
    config = DispatcherConfig(
        worker=WorkerConfig(database_url="sqlite://", tracking_uri="x"), pack_wait_seconds=0.0
    )
    d = Dispatcher(config, store=None)  # type: ignore[arg-type]
    heads = trials("a-sweep", 6)
    numbers = [j.spec["trial"]["number"] for j in heads]
    assert numbers != sorted(numbers)  # the claim order (by id) is not the trials' order
    [unit] = d.units(heads)
    assert [j.spec["trial"]["number"] for j in unit] == list(range(6))
    assert {j.id for j in unit} == {j.id for j in heads}


def test_a_trial_that_asked_for_a_pack_but_cannot_have_one_trains_alone_saying_why() -> None:
    jobs = [Job(f"t{n}", trial(n)) for n in range(4)]
    jobs += [Job("gelu", trial(4, model={"hidden": [16], "activation": "gelu"}))]
    jobs += [Job("warm", trial(5, optimizer={"schedule": {"warmup_steps": 10}}))]
    d, store, _, _, clock = dispatcher(jobs)
    d.launch()
    clock.now += 0.3
    d.launch()
    assert launched(d) == [["gelu"], ["t0", "t1", "t2", "t3"], ["warm"]]
    assert store.notes["t0"] is None
    assert store.notes["gelu"] == (
        "trains alone, not in a pack: activation 'gelu': packs take in-place activations only"
    )
    assert store.notes["warm"] is not None and "warmup_steps" in store.notes["warm"]


def test_a_pack_is_not_killed_for_one_members_late_stop_but_a_lone_attempt_is(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Past the stop grace, a lone attempt's Ray task is killed; a pack's is not (killing it
    would stop every member: the pack asks each member's stop at every step)."""
    import ray

    from db.states import StopReason
    from db.views import StopRequest
    from workers.dispatcher import Attempt

    killed: list[Any] = []
    monkeypatch.setattr(ray, "cancel", lambda ref, force: killed.append(ref))
    d, store, _, _, _ = dispatcher([])
    d._tell_board = lambda *args: None  # type: ignore[method-assign]
    pack_ref, lone_ref = object(), object()
    for job_id, ref, members in (("m1", pack_ref, 2), ("m2", pack_ref, 2), ("lone", lone_ref, 1)):
        d.inflight[job_id] = Attempt(
            Job(job_id, trial(0)),
            ref,
            ROOM,
            0.0,
            stop_seen=0.0,
            pack=members,  # type: ignore[arg-type]
        )
    requests = [StopRequest(j, 1, StopReason.CANCEL) for j in ("m1", "lone")]
    store.stop_requests = lambda owner: requests  # type: ignore[attr-defined]
    d.signal_stops()  # every stop was seen long ago (monotonic 0.0): past the grace
    assert killed == [lone_ref]
    assert d.inflight["lone"].force_stopped and not d.inflight["m1"].force_stopped
