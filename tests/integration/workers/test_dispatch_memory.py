"""Jobs share a Ray node's memory: each attempt reserves its estimate (core.memory) as Ray's
``memory`` resource, a job waits while the node's memory is taken, and a job larger than
every node fails. A local Ray whose node has 2 CPUs and the memory of 1.5 jobs, the real
queue (SQLite) and MLflow store."""

from __future__ import annotations

import os
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from dispatching import running, wait

from core.memory import estimate, size
from core.spec import parse_spec
from db.states import JobStatus
from db.store import JobStore

pytestmark = pytest.mark.slow


def slow_job(seed: int) -> dict[str, Any]:
    """A few seconds of training: digits, wide layers, small batches."""
    return {
        "name": f"digits-{seed}", "dataset": "digits", "model": {"hidden": [256, 256]},
        "optimizer": {"epochs": 30, "batch_size": 8, "lr": 0.01}, "seed": seed,
        "regularization": {"early_stopping": {"enabled": False}},
    }  # fmt: skip


NEEDS = estimate(parse_spec(slow_job(0))).total
NODE_MEMORY = NEEDS * 3 // 2  # one such job at a time, though the node has 2 CPUs


@pytest.fixture(scope="module")
def ray_node() -> Iterator[Any]:
    import ray

    os.environ.setdefault("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")
    ray.init(num_cpus=2, _memory=NODE_MEMORY, include_dashboard=False, log_to_driver=False)
    yield ray
    ray.shutdown()


@pytest.fixture
def store(ray_node: Any, tmp_path: Path) -> Iterator[JobStore]:
    with running(tmp_path) as (store, _):
        yield store


def test_a_job_waits_for_the_memory_another_holds(store: JobStore, ray_node: Any) -> None:
    first = store.submit(spec=parse_spec(slow_job(1))).id
    wait(store, first, lambda j: j.status is JobStatus.RUNNING)
    # Ray holds the running attempt's estimate once it schedules its task (memory=NEEDS)
    deadline, held = time.monotonic() + 30, 0.0
    while held != NEEDS and time.monotonic() < deadline:
        time.sleep(0.05)
        held = NODE_MEMORY - ray_node.available_resources().get("memory", 0.0)
    assert held == NEEDS
    second = store.submit(spec=parse_spec(slow_job(2))).id
    waiting = wait(store, second, lambda j: j.pending_reason is not None)
    assert store.get(job_id=first).status is JobStatus.RUNNING
    assert waiting.status is JobStatus.QUEUED
    assert waiting.pending_reason == (
        f"waiting for resources: needs 1 CPU / 0 GPU / {size(NEEDS)} memory, "
        f"1 CPU / 0 GPU / {size(NODE_MEMORY - NEEDS)} memory free"
    )
    for job_id in (first, second):
        done = wait(store, job_id, lambda j: j.status.value in ("succeeded", "failed"))
        assert done.status is JobStatus.SUCCEEDED, done.error
    events = {e.to_status.value: e.at for e in store.events(job_id=second)}
    first_done = {e.to_status.value: e.at for e in store.events(job_id=first)}["succeeded"]
    assert events["running"] >= first_done  # the second started only once the first ended


def test_a_job_larger_than_the_node_fails_at_once(store: JobStore) -> None:
    big = {**slow_job(3), "model": {"hidden": [2048, 2048]}}
    needs = estimate(parse_spec(big)).total
    assert needs > NODE_MEMORY
    job_id = store.submit(spec=parse_spec(big)).id
    job = wait(store, job_id, lambda j: j.status is JobStatus.FAILED, timeout=30)
    assert job.attempt == 0
    assert f"needs 1 CPU / 0 GPU / {size(needs)} memory" in str(job.error)
    assert f"the largest node has 2 CPU / 0 GPU / {size(NODE_MEMORY)} memory" in str(job.error)
