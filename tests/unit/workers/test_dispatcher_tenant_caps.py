"""A tenant at its cap of running jobs: its queued jobs wait, saying so, and other tenants'
jobs run. With the queue, the keys and Ray faked (``test_dispatcher_memory``'s fakes); the
real counts and caps: tests/integration/db/test_db_keys_datasets.py."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field

from core.memory import GiB
from db.views import TenantCaps
from tests.unit.workers.test_dispatcher_memory import SMALL, FakeStore, Job, dispatcher
from workers.dispatcher import CAPS_SECONDS, Demand, Dispatcher, DispatcherConfig

ROOM = Demand(8, 0, 16 * GiB)


@dataclass
class CountingStore(FakeStore):
    running: dict[str, int] = field(default_factory=dict)

    def running_counts(self, *, tenants: Iterable[str]) -> dict[str, int]:
        return {t: self.running.get(t, 0) for t in tenants}


@dataclass
class FakeKeys:
    caps: dict[str, TenantCaps]

    def tenant_caps(self, *, tenants: Iterable[str], default: TenantCaps) -> dict[str, TenantCaps]:
        return {t: self.caps.get(t, default) for t in tenants}


def capped(jobs: list[Job], running: dict[str, int], **config: object) -> Dispatcher:
    d, _ = dispatcher([], ROOM, ROOM)
    d.store = CountingStore(jobs, running=running)  # type: ignore[assignment]
    d.config = DispatcherConfig(worker=d.config.worker, **config)  # type: ignore[arg-type]
    return d


def test_a_tenant_at_its_cap_waits_and_other_tenants_run() -> None:
    jobs = [Job("a1", SMALL, tenant="alice"), Job("a2", SMALL, tenant="alice"),
            Job("a3", SMALL, tenant="alice"), Job("b1", SMALL, tenant="bob")]  # fmt: skip
    d = capped(jobs, {"alice": 1})
    d.keys = FakeKeys({"alice": TenantCaps(max_running=2)})  # type: ignore[assignment]
    d.launch()
    assert list(d.inflight) == ["a1", "b1"]  # alice had 1 running: one more, up to her cap
    store = d.store
    assert [j.id for j in store.queued] == ["a2", "a3"]  # type: ignore[attr-defined]
    reason = "tenant alice is at its cap of 2 running jobs"
    assert store.reasons == {"a2": reason, "a3": reason}  # type: ignore[attr-defined]


def test_without_keys_the_configured_default_caps_every_tenant() -> None:
    jobs = [Job("d1", SMALL), Job("d2", SMALL)]
    d = capped(jobs, {"default": 0}, max_running_per_tenant=1)
    d.launch()
    assert list(d.inflight) == ["d1"]
    assert d.store.reasons == {  # type: ignore[attr-defined]
        "d2": "tenant default is at its cap of 1 running jobs"
    }


def test_no_cap_reads_no_counts() -> None:
    d = capped([Job("d1", SMALL), Job("d2", SMALL)], {})
    d.store.running_counts = None  # type: ignore[attr-defined]  # a call would raise
    d.launch()
    assert list(d.inflight) == ["d1", "d2"]


def test_the_keys_caps_are_read_again_after_caps_seconds() -> None:
    reads: list[set[str]] = []
    keys = FakeKeys({"alice": TenantCaps(max_running=1)})
    real = keys.tenant_caps
    keys.tenant_caps = lambda **kw: (reads.append(set(kw["tenants"])), real(**kw))[1]  # type: ignore[method-assign]
    clock = [0.0]
    d = capped([Job("a1", SMALL, tenant="alice"), Job("a2", SMALL, tenant="alice")], {"alice": 0})
    d.keys, d.clock = keys, (lambda: clock[0])  # type: ignore[assignment]
    d.launch()
    assert list(d.inflight) == ["a1"]
    d.store.running["alice"] = 1  # type: ignore[attr-defined]
    keys.caps["alice"] = TenantCaps(max_running=2)  # the cap is raised: not seen yet
    clock[0] += CAPS_SECONDS - 0.1
    d.launch()
    assert list(d.inflight) == ["a1"] and reads == [{"alice"}]
    clock[0] += 0.1
    d.launch()
    assert list(d.inflight) == ["a1", "a2"] and reads == [{"alice"}, {"alice"}]
