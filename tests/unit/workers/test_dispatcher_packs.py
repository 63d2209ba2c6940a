"""How the dispatcher groups a queue's head into packs (``Dispatcher.units``); the store and
Ray are not needed (the real ones: tests/integration/workers/test_sweeps.py)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from core.sweep import parse_sweep, trial_spec
from db.sweeps import trial_job_id
from workers.dispatcher import Dispatcher, DispatcherConfig
from workers.task import WorkerConfig


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
