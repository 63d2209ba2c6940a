"""The dispatcher reserves each attempt's memory estimate on Ray and claims only what fits,
with the queue and Ray's task faked (the real ones: tests/integration/workers/
test_dispatch_memory.py)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import pytest

from core.memory import GiB, estimate, size
from core.spec import parse_spec
from workers.dispatcher import Demand, Dispatcher, DispatcherConfig, demand
from workers.task import WorkerConfig

SMALL = {"dataset": "iris", "model": {"hidden": [8]}}
LARGE = {"dataset": {"name": "moons", "n_samples": 200_000}, "model": {"hidden": [1024]},
         "optimizer": {"batch_size": 65_536}}  # fmt: skip


@dataclass
class Job:
    id: str
    spec: dict[str, Any]
    attempt: int = 1
    pending_reason: str | None = None
    tenant: str = "default"


@dataclass
class FakeStore:
    queued: list[Job]
    reasons: dict[str, str] = field(default_factory=dict)
    failed: dict[str, str] = field(default_factory=dict)

    def next_queued(self, *, limit: int) -> list[Job]:
        return self.queued[:limit]

    def claim(self, *, owner: str, limit: int, ids: list[str], lease_seconds: float) -> list[Job]:
        claimed = [j for j in self.queued if j.id in ids][:limit]
        self.queued = [j for j in self.queued if j not in claimed]
        return claimed

    def set_pending_reason(self, *, job_id: str, reason: str) -> None:
        self.reasons[job_id] = reason

    def fail_queued(self, *, job_id: str, reason: str) -> None:
        self.failed[job_id] = reason
        self.queued = [j for j in self.queued if j.id != job_id]


@dataclass
class FakeRemote:
    """Ray's remote function: records the options of each launch."""

    launched: list[dict[str, Any]] = field(default_factory=list)
    _options: dict[str, Any] = field(default_factory=dict)

    def options(self, **options: Any) -> FakeRemote:
        self._options = options
        return self

    def remote(self, *args: Any) -> str:
        self.launched.append(self._options)
        return f"ref-{len(self.launched)}"


def dispatcher(jobs: list[Job], free: Demand, largest: Demand) -> tuple[Dispatcher, FakeStore]:
    store = FakeStore(jobs)
    config = DispatcherConfig(worker=WorkerConfig(database_url="sqlite://", tracking_uri="x"))
    d = Dispatcher(config, store)  # type: ignore[arg-type]
    d._remote = FakeRemote()
    d.capacity = lambda: (free, largest)  # type: ignore[method-assign]
    return d, store


def memory_of(spec: dict[str, Any]) -> int:
    return estimate(parse_spec(spec)).total


def test_an_attempt_reserves_its_estimate_as_rays_memory() -> None:
    d, store = dispatcher(
        [Job("a", SMALL), Job("b", LARGE)], Demand(2, 0, 16 * GiB), Demand(2, 0, 16 * GiB)
    )
    d.launch()
    assert store.queued == []
    assert [o["memory"] for o in d._remote.launched] == [memory_of(SMALL), memory_of(LARGE)]
    assert [o["num_cpus"] for o in d._remote.launched] == [1.0, 1.0]
    assert memory_of(LARGE) > 1 * GiB > memory_of(SMALL)  # the test tells them apart
    assert d.inflight["b"].needs == Demand(1.0, 0.0, memory_of(LARGE))


def test_a_job_waits_for_memory_like_for_cpus() -> None:
    room = Demand(2, 0, memory_of(LARGE) - 1)  # the CPUs are free; the memory falls short
    d, store = dispatcher([Job("b", LARGE), Job("a", SMALL)], room, Demand(2, 0, 16 * GiB))
    d.launch()  # "a", behind it, fits the room left (backfill: test_dispatcher_backfill.py)
    assert [o["memory"] for o in d._remote.launched] == [memory_of(SMALL)]
    assert [j.id for j in store.queued] == ["b"]
    assert store.reasons["b"] == (
        f"waiting for resources: needs 1 CPU / 0 GPU / {size(memory_of(LARGE))} memory, "
        f"2 CPU / 0 GPU / {size(memory_of(LARGE) - 1)} memory free"
    )


@pytest.mark.parametrize("mode", ["fail", "wait"])
def test_a_job_larger_than_every_node_is_unsatisfiable(mode: str) -> None:
    node = Demand(2, 0, 1 * GiB)
    d, store = dispatcher([Job("b", LARGE), Job("a", SMALL)], node, node)
    d.config = DispatcherConfig(worker=d.config.worker, unsatisfiable=mode)  # type: ignore[arg-type]
    d.launch()
    reason = (
        f"no node of the cluster can run it: needs 1 CPU / 0 GPU / {size(memory_of(LARGE))} "
        "memory, the largest node has 2 CPU / 0 GPU / 1 GiB memory"
    )
    assert (store.failed if mode == "fail" else store.reasons) == {"b": reason}
    assert [o["memory"] for o in d._remote.launched] == [memory_of(SMALL)]  # not held up


def test_the_demand_of_a_stored_spec() -> None:
    spec = parse_spec({**SMALL, "resources": {"cpus": 2, "gpus": 0.5}}).model_dump(mode="json")
    assert demand(spec) == Demand(2.0, 0.5, memory_of(spec))
    assert demand({"dataset": "no such data set"}).memory == 0  # its attempt reports it


@pytest.mark.parametrize("mode", ["fail", "wait"])
def test_with_no_node_with_cpus_every_job_waits_for_one(mode: str) -> None:
    """A cluster with no live node with CPUs (a head of 0 CPUs alone, workers restarting, the
    local node dead) is short of nodes for now: nothing is failed, the head says why."""
    gpu_head = Demand(0, 1, 1 * GiB)  # a node without CPUs is no worker node either
    for largest in (Demand(0, 0, 0), gpu_head):
        d, store = dispatcher([Job("a", SMALL), Job("b", LARGE)], largest, largest)
        d.config = DispatcherConfig(worker=d.config.worker, unsatisfiable=mode)  # type: ignore[arg-type]
        d.launch()
        assert store.failed == {} and len(store.queued) == 2
        assert store.reasons == {"a": "waiting for a Ray node with CPUs: none is alive"}
        assert d._remote.launched == []


def test_a_job_on_an_upload_reserves_the_estimate_of_its_recorded_shape(tmp_path: Any) -> None:
    """As at its submission: the upload's rows, features and classes (the data-set store on
    SQLite), not the table core.memory assumes for files; a record without a profile, an
    unknown data set or a missing target fall back to that table."""
    from core.spec import DatasetShape
    from core.uploads import ColumnProfile
    from db.datasets import DatasetStore
    from db.migrate import upgrade
    from db.session import make_engine

    url = f"sqlite:///{tmp_path}/gradq.db"
    upgrade(url)
    datasets = DatasetStore(make_engine(url))
    features = {f"x{i}": ColumnProfile(False, False, None).to_json() for i in range(300)}
    record = dict(tenant="t", name="wide.csv", sha256="0" * 64, size=1, rows=50_000,
                  columns=[*features, "y"], target="y", uri="file:///nowhere")  # fmt: skip
    wide = datasets.add(
        **record, profile={**features, "y": ColumnProfile(False, True, 4).to_json()}
    )
    old = datasets.add(**record)  # recorded before profiles were
    job = {"dataset": {"name": "upload", "id": wide.id, "target": "y"}, "model": {"hidden": [64]}}
    shape = DatasetShape("classification", 300, 4, n_rows=50_000)
    assumed = estimate(parse_spec(job)).total
    assert demand(job, datasets).memory == estimate(parse_spec(job), shape).total != assumed
    assert demand(job).memory == assumed  # no store to read
    for other in ({"id": old.id}, {"id": "no-such-set"}, {"target": "z"}):
        spec = {**job, "dataset": {**job["dataset"], **other}}
        assert demand(spec, datasets).memory == estimate(parse_spec(spec)).total, other
