"""A Ray cluster with no node with CPUs (a head of 0 CPUs, as in docker/compose.yaml, before
any worker node joins) is short of nodes, not too small: a job submitted then stays queued,
saying why, and runs once a worker node joins. ``ray.cluster_utils.Cluster`` on 127.0.0.1
(``RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER=0``), the real queue (SQLite) and MLflow store."""

from __future__ import annotations

import os
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from dispatching import running, wait

from core.spec import parse_spec
from db.states import JobStatus

pytestmark = pytest.mark.slow

SPEC = {"name": "iris", "dataset": "iris", "model": {"hidden": [8]}, "optimizer": {"epochs": 3}}


@pytest.fixture
def cluster() -> Iterator[Any]:
    """A head of 0 CPUs and no worker node, this process connected to it."""
    import ray
    from ray.cluster_utils import Cluster

    os.environ.setdefault("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")
    temp = tempfile.mkdtemp(prefix="gq", dir="/tmp")  # short: Unix socket paths
    head = {"num_cpus": 0, "temp_dir": temp, "include_dashboard": False}
    cluster = Cluster(initialize_head=True, connect=True, head_node_args=head)
    try:
        yield cluster
    finally:
        ray.shutdown()
        cluster.shutdown()


def test_a_job_waits_for_a_worker_node_and_then_runs(cluster: Any, tmp_path: Path) -> None:
    with running(tmp_path, warm_workers=0) as (store, dispatcher):
        job_id = store.submit(spec=parse_spec(SPEC)).id
        job = wait(
            store, job_id, lambda j: j.pending_reason is not None or j.status.value != "queued"
        )
        assert (job.status, job.pending_reason) == (
            JobStatus.QUEUED,
            "waiting for a Ray node with CPUs: none is alive",
        )
        time.sleep(2 * dispatcher.config.full_scan_seconds)  # more looks at the queue's head
        job = store.get(job_id=job_id)
        assert (job.status, job.attempt, job.error) == (JobStatus.QUEUED, 0, None)
        cluster.add_node(num_cpus=1)
        done = wait(store, job_id, lambda j: j.status.value in ("succeeded", "failed"), 60)
        assert done.status is JobStatus.SUCCEEDED, done.error
        assert done.attempt == 1
