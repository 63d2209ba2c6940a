"""The compose topology, booted natively on 127.0.0.1 and configured only by the same
``GRADQ_*`` variables as docker/compose.yaml: PostgreSQL (fresh ``gradq`` and ``mlflow``
databases), ``mlflow server --serve-artifacts``, a Ray cluster of a head with no CPU and two
one-CPU worker nodes (token authentication on), ``gradq dispatcher`` and ``gradq api`` with
``GRADQ_AUTH=keys``, each its own process group.

Every server binds 127.0.0.1 only, and the test checks it: the Ray cluster is
``ray.cluster_utils.Cluster`` under ``RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER=0`` (``ray_cluster.py``,
a process of its own; ``ray start`` would listen on every interface), the HTTP servers bind port
0 and report the port they got (no port is chosen before it is bound), and while jobs train
every TCP socket the stack's processes listen on, and every UDP socket they bound, is on
127.0.0.1.

Six jobs run across both workers; one worker node is removed while its job trains, and that
job resumes on the other node from the checkpoint it downloads over MLflow's HTTP artifact
service. Then the other worker node is removed too: jobs submitted to a cluster with no
worker node stay queued, saying why, until a new node joins and runs them all. Only processes this test started are stopped (by process group, then by pid for
any descendant left, found through this test's own Ray temp dir); never a global ``ray stop``.
"""

from __future__ import annotations

import json
import os
import secrets
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import httpx
import pytest
from deploy_stack import Stack, databases, descendants, off_loopback, wait_for
from mlflow import MlflowClient

from workers.dispatcher import NO_NODE_REASON

# chaos: a worker node is lost mid-training (part of `pytest -m chaos`, see tests/chaos/)
pytestmark = [pytest.mark.postgres, pytest.mark.slow, pytest.mark.chaos, pytest.mark.timeout(600)]

BIN = Path(sys.executable).parent
CLUSTER = Path(__file__).with_name("ray_cluster.py")
TERMINAL = ("succeeded", "failed", "cancelled")


def job(name: str, dataset: str, hidden: list[int], epochs: int, batch: int) -> dict[str, Any]:
    return {
        "name": name, "dataset": dataset, "model": {"hidden": hidden},
        "optimizer": {"epochs": epochs, "batch_size": batch, "lr": 0.01},
        "regularization": {"early_stopping": {"enabled": False}},
        "checkpoint_every": 1,
    }  # fmt: skip


def test_compose_topology_on_loopback(postgres_down: str | None) -> None:
    if postgres_down is not None:
        pytest.skip(postgres_down)
    base = os.environ.get(
        "GRADQ_TEST_POSTGRES_URL", "postgresql+psycopg://postgres@127.0.0.1:5432/test"
    )
    folder = Path(tempfile.mkdtemp(prefix="gradq-topology-"))
    ray_temp = Path(tempfile.mkdtemp(prefix="gq", dir="/tmp"))  # short: Unix socket paths
    stack = Stack(folder=folder, ray_temp=ray_temp)
    token = secrets.token_hex(16)
    plain = {k: v for k, v in os.environ.items() if not k.startswith(("GRADQ_", "RAY_"))}
    plain["PYTHONUNBUFFERED"] = "1"
    # "0": Ray binds and advertises 127.0.0.1 (RAY_TMPDIR: its address file stays ours)
    ray_env = {
        **plain, "RAY_AUTH_MODE": "token", "RAY_AUTH_TOKEN": token,
        "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "0", "RAY_TMPDIR": str(ray_temp),
    }  # fmt: skip
    try:
        with databases(base) as (gradq_db, mlflow_db):
            stack.start("mlflow", [
                str(BIN / "mlflow"), "server", "--backend-store-uri", mlflow_db,
                "--serve-artifacts", "--artifacts-destination", str(folder / "mlartifacts"),
                "--host", "127.0.0.1", "--port", "0", "--workers", "1",
            ], plain)  # fmt: skip
            stack.start("ray-cluster", [
                sys.executable, str(CLUSTER), str(folder), "--workers", "2",
                "--temp-dir", str(ray_temp),
            ], ray_env)  # fmt: skip
            mlflow_url = f"http://127.0.0.1:{stack.served_port('mlflow')}"
            gradq_env = {
                "GRADQ_DATABASE_URL": gradq_db,
                "GRADQ_MLFLOW_TRACKING_URI": mlflow_url,
                "GRADQ_MLFLOW_UI_URL": mlflow_url,
                "GRADQ_LEASE_SECONDS": "10",
                "GRADQ_HEARTBEAT_SECONDS": "1",
            }
            wait_for("the Ray cluster", lambda: (folder / "cluster.json").exists(), 120, stack)
            cluster = json.loads((folder / "cluster.json").read_text())
            address = cluster["address"]
            assert address.startswith("127.0.0.1:"), address
            wait_for("MLflow", lambda: httpx.get(f"{mlflow_url}/health", timeout=2)
                     .status_code == 200, 90, stack)  # fmt: skip

            keys = subprocess.run(
                [str(BIN / "gradq"), "keys", "create", "--tenant", "ops"],
                env={**plain, **gradq_env}, capture_output=True, text=True, timeout=120,
            )  # fmt: skip
            assert keys.returncode == 0, keys.stderr
            key = keys.stdout.strip().splitlines()[-1]
            assert key.startswith("gq_")
            stack.start("dispatcher", [str(BIN / "gradq"), "dispatcher"],
                        {**ray_env, **gradq_env, "GRADQ_RAY_ADDRESS": address})  # fmt: skip
            stack.start("api", [str(BIN / "gradq"), "api"], {
                **ray_env, **gradq_env, "GRADQ_AUTH": "keys", "GRADQ_RAY_ADDRESS": address,
                "GRADQ_HOST": "127.0.0.1", "GRADQ_PORT": "0",
            })  # fmt: skip
            url = f"http://127.0.0.1:{stack.served_port('api')}"
            wait_for("the API", lambda: httpx.get(f"{url}/healthz", timeout=2).is_success,
                     120, stack)  # fmt: skip
            with httpx.Client(base_url=url, timeout=30) as anonymous:
                assert anonymous.get("/v1/jobs").status_code == 401  # GRADQ_AUTH=keys
            http = httpx.Client(
                base_url=url, timeout=30, headers={"Authorization": f"Bearer {key}"}
            )
            with http:
                wait_for("/readyz", lambda: http.get("/readyz").status_code == 200, 60, stack)
                run_topology(http, stack, folder, cluster["raylets"], mlflow_url)
    finally:
        stack.stop_all()
        shutil.rmtree(folder, ignore_errors=True)
        shutil.rmtree(ray_temp, ignore_errors=True)


def run_topology(
    http: httpx.Client, stack: Stack, folder: Path, raylets: list[int], mlflow_url: str
) -> None:
    specs = [job("long", "digits", [256, 256], epochs=150, batch=4)] + [
        job(f"short-{i}", "iris", [16], epochs=25, batch=8) for i in range(5)
    ]
    ids = []
    for spec in specs:
        r = http.post("/v1/jobs", json=spec)
        assert r.status_code in (200, 201, 202), r.text
        ids.append(r.json()["id"])
    long_id = ids[0]
    seen: dict[tuple[str, int], str] = {}  # (job, attempt) -> node

    def observe() -> dict[str, Any]:
        jobs = {i: http.get(f"/v1/jobs/{i}").json() for i in ids}
        for i, j in jobs.items():
            node = j.get("node") or (j.get("progress") or {}).get("node")
            if node and j["status"] in ("running", "succeeded"):
                seen.setdefault((i, j["attempt"]), node)
        return jobs

    def long_trains() -> bool:
        j = observe()[long_id]
        return j["status"] == "running" and (j.get("progress") or {}).get("epoch", 0) >= 3

    wait_for("the long job to train 3 epochs", long_trains, 180, stack)
    # The node goes only once a checkpoint of the job is in MLflow (the attempt sends its
    # first one in the background: on a loaded host it can still be on its way at epoch 3,
    # and the job would then rightly start again from scratch, not resume).
    run_id = http.get(f"/v1/jobs/{long_id}").json()["mlflow_run_id"]
    client = MlflowClient(tracking_uri=mlflow_url)
    wait_for("a checkpoint of the long job in MLflow", lambda: client.list_artifacts(
        run_id, "checkpoints/last"), 120, stack)  # fmt: skip
    # every server of the stack is up now: the head, both nodes with a job's worker process,
    # the dispatcher's and the API's Ray clients, MLflow and the API
    pids = stack.pids()
    assert len(pids) >= 10, f"too few processes found to check: {pids}"
    bad = off_loopback(pids)
    assert not bad, f"listening off 127.0.0.1: {bad}"
    victim_node = seen[(long_id, 1)]
    pid = http.get(f"/v1/jobs/{long_id}").json()["progress"]["pid"]
    victims = [n for n, raylet in enumerate(raylets, start=1) if pid in descendants(raylet)]
    assert len(victims) == 1, f"no single worker node runs pid {pid}"
    # `docker compose stop`: SIGTERM to the node's processes, then SIGKILL
    (folder / f"remove-{victims[0]}").write_text("")
    wait_for("the node's removal", lambda: (folder / f"removed-{victims[0]}").exists(), 60,
             stack)  # fmt: skip

    def all_done() -> dict[str, Any] | None:
        jobs = observe()
        return jobs if all(j["status"] in TERMINAL for j in jobs.values()) else None

    jobs = wait_for("all six jobs to finish", all_done, 240, stack)
    for i, j in jobs.items():
        assert j["status"] == "succeeded", (i, j["error"], stack.logs())
    assert len(set(seen.values())) == 2, f"jobs ran on {set(seen.values())}: {seen}"
    long = jobs[long_id]
    assert long["attempt"] >= 2
    assert long["node"] != victim_node, "the long job did not move to the other node"
    # from a checkpoint, not from scratch: checkpoints go to MLflow at most every 10 s (the
    # first at once), so at the stop the newest may still be the first epoch's
    assert long["result"]["resumed_from_epoch"] >= 1
    # The checkpoint went through MLflow's artifact service, which stores it on its side.
    stored = list((folder / "mlartifacts").rglob("checkpoint.pt"))
    assert stored, "no checkpoint in the MLflow server's artifact destination"
    for i, epochs in zip(ids, [s["optimizer"]["epochs"] for s in specs], strict=True):
        curves = http.get(f"/v1/jobs/{i}/metrics").json()
        steps = [p["step"] for p in curves["metrics"]["loss/train"]]
        assert steps == list(range(1, epochs + 1)), (i, steps)  # continuous, no duplicate
    no_workers_then_one(http, stack, folder, victims[0], len(raylets))


def no_workers_then_one(
    http: httpx.Client, stack: Stack, folder: Path, removed: int, nodes: int
) -> None:
    """Every worker node stopped: new jobs wait, queued with the reason; a node that joins
    runs them all."""
    last = next(n for n in range(1, nodes + 1) if n != removed)
    (folder / f"remove-{last}").write_text("")
    wait_for("the last worker node's removal", lambda: (folder / f"removed-{last}").exists(),
             60, stack)  # fmt: skip
    ids = []
    for i in range(2):
        r = http.post("/v1/jobs", json=job(f"later-{i}", "iris", [8], epochs=3, batch=16))
        assert r.status_code == 201, r.text
        ids.append(r.json()["id"])

    seen: list[Any] = []

    def waiting() -> list[dict[str, Any]] | None:
        jobs = [http.get(f"/v1/jobs/{i}").json() for i in ids]
        seen[:] = [(j["status"], j["attempt"], j.get("pending_reason")) for j in jobs]
        reasons = [j.get("pending_reason") or "" for j in jobs]
        # the head of the queue says what it waits for; the job behind it, its place
        return jobs if reasons == [NO_NODE_REASON, "1 job ahead in the queue"] else None

    try:
        jobs = wait_for("the jobs to wait for a node", waiting, 60, stack)
    except AssertionError as exc:
        raise AssertionError(f"last seen (status, attempt, reason): {seen}") from exc
    assert [j["status"] for j in jobs] == ["queued", "queued"]
    time.sleep(3)  # a few dispatch rounds later, still waiting: nothing failed them
    later = [http.get(f"/v1/jobs/{i}").json() for i in ids]
    assert [(j["status"], j["pending_reason"]) for j in later] == [
        ("queued", NO_NODE_REASON), ("queued", "1 job ahead in the queue")
    ]  # fmt: skip
    (folder / f"add-{nodes + 1}").write_text("")
    wait_for("the new worker node", lambda: (folder / f"added-{nodes + 1}").exists(), 120, stack)

    def done() -> list[dict[str, Any]] | None:
        jobs = [http.get(f"/v1/jobs/{i}").json() for i in ids]
        return jobs if all(j["status"] in TERMINAL for j in jobs) else None

    for j in wait_for("the waiting jobs to finish", done, 180, stack):
        assert (j["status"], j["attempt"]) == ("succeeded", 1), (j["error"], stack.logs())
