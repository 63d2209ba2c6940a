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

MLflow runs behind its basic-auth app with docker/mlflow-auth.ini, as in compose: gradq's
services sign in with the account docker/mlflow-service-account.py makes. A second tenant's
key and an anonymous client then try a tenant's uploaded data set and its job's model and
artifacts through every port the stack publishes (the API and MLflow) and get nothing.

Six jobs run across both workers; one worker node is removed while its job trains, and that
job resumes on the other node from the checkpoint it downloads over MLflow's HTTP artifact
service. Then the other worker node is removed too: jobs submitted to a cluster with no
worker node stay queued, saying why, until a new node joins and runs them all. Only processes this test started are stopped (by process group, then by pid for
any descendant left, found through this test's own Ray temp dir); never a global ``ray stop``.
"""

from __future__ import annotations

import json
import os
import re
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
DOCKER = Path(__file__).resolve().parents[3] / "docker"
TERMINAL = ("succeeded", "failed", "cancelled")


def job(name: str, dataset: str, hidden: list[int], epochs: int, batch: int) -> dict[str, Any]:
    return {
        "name": name, "dataset": dataset, "model": {"hidden": hidden},
        "optimizer": {"epochs": epochs, "batch_size": batch, "lr": 0.01},
        "regularization": {"early_stopping": {"enabled": False}},
        "checkpoint_every": 1,
    }  # fmt: skip


def test_compose_topology_on_loopback(
    postgres_down: str | None, monkeypatch: pytest.MonkeyPatch
) -> None:
    if postgres_down is not None:
        pytest.skip(postgres_down)
    base = os.environ.get(
        "GRADQ_TEST_POSTGRES_URL", "postgresql+psycopg://postgres@127.0.0.1:5432/test"
    )
    folder = Path(tempfile.mkdtemp(prefix="gradq-topology-"))
    ray_temp = Path(tempfile.mkdtemp(prefix="gq", dir="/tmp"))  # short: Unix socket paths
    stack = Stack(folder=folder, ray_temp=ray_temp)
    token = secrets.token_hex(16)
    admin, service = secrets.token_urlsafe(16), secrets.token_urlsafe(16)  # MLflow passwords
    plain = {k: v for k, v in os.environ.items() if not k.startswith(("GRADQ_", "RAY_", "MLFLOW_"))}
    plain["PYTHONUNBUFFERED"] = "1"
    signed_in = {"MLFLOW_TRACKING_USERNAME": "gradq", "MLFLOW_TRACKING_PASSWORD": service}
    # "0": Ray binds and advertises 127.0.0.1 (RAY_TMPDIR: its address file stays ours)
    ray_env = {
        **plain, "RAY_AUTH_MODE": "token", "RAY_AUTH_TOKEN": token,
        "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "0", "RAY_TMPDIR": str(ray_temp), **signed_in,
    }  # fmt: skip
    try:
        with databases(base) as (gradq_db, mlflow_db):
            auth = folder / "mlflow-auth.ini"  # compose's, its user store in the test's folder
            auth.write_text(re.sub(
                r"^database_uri = .*$", f"database_uri = sqlite:///{folder}/basic_auth.db",
                (DOCKER / "mlflow-auth.ini").read_text(), flags=re.MULTILINE,
            ))  # fmt: skip
            stack.start("mlflow", [
                str(BIN / "mlflow"), "server", "--app-name", "basic-auth",
                "--backend-store-uri", mlflow_db,
                "--serve-artifacts", "--artifacts-destination", str(folder / "mlartifacts"),
                "--host", "127.0.0.1", "--port", "0", "--workers", "1",
            ], {**plain, "MLFLOW_AUTH_CONFIG_PATH": str(auth),
                "MLFLOW_AUTH_ADMIN_USERNAME": "admin", "MLFLOW_AUTH_ADMIN_PASSWORD": admin,
                "MLFLOW_FLASK_SERVER_SECRET_KEY": secrets.token_hex(16)})  # fmt: skip
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
                **signed_in,
            }
            wait_for("the Ray cluster", lambda: (folder / "cluster.json").exists(), 120, stack)
            cluster = json.loads((folder / "cluster.json").read_text())
            address = cluster["address"]
            assert address.startswith("127.0.0.1:"), address
            wait_for("MLflow", lambda: httpx.get(f"{mlflow_url}/health", timeout=2)
                     .status_code == 200, 120, stack)  # fmt: skip
            account = subprocess.run(
                [sys.executable, str(DOCKER / "mlflow-service-account.py")],
                env={**plain, "MLFLOW_TRACKING_URI": mlflow_url,
                     "MLFLOW_TRACKING_USERNAME": "admin", "MLFLOW_TRACKING_PASSWORD": admin,
                     "SERVICE_ACCOUNT_USERNAME": "gradq", "SERVICE_ACCOUNT_PASSWORD": service},
                capture_output=True, text=True, timeout=120,
            )  # fmt: skip
            assert account.returncode == 0, account.stderr
            for name, value in signed_in.items():  # this test's own MLflow client
                monkeypatch.setenv(name, value)

            keys = subprocess.run(
                [str(BIN / "gradq"), "keys", "create", "--tenant", "ops"],
                env={**plain, **gradq_env}, capture_output=True, text=True, timeout=120,
            )  # fmt: skip
            assert keys.returncode == 0, keys.stderr
            key = keys.stdout.strip().splitlines()[-1]
            assert key.startswith("gq_")
            others = subprocess.run(
                [str(BIN / "gradq"), "keys", "create", "--tenant", "others"],
                env={**plain, **gradq_env}, capture_output=True, text=True, timeout=120,
            )  # fmt: skip
            assert others.returncode == 0, others.stderr
            other_key = others.stdout.strip().splitlines()[-1]
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
                run_topology(http, stack, folder, cluster["raylets"], mlflow_url, other_key)
    finally:
        stack.stop_all()
        shutil.rmtree(folder, ignore_errors=True)
        shutil.rmtree(ray_temp, ignore_errors=True)


def run_topology(
    http: httpx.Client,
    stack: Stack,
    folder: Path,
    raylets: list[int],
    mlflow_url: str,
    other_key: str,
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
    nothing_for_others(http, ids[1], mlflow_url, other_key)
    no_workers_then_one(http, stack, folder, victims[0], len(raylets))


def nothing_for_others(http: httpx.Client, job_id: str, mlflow_url: str, other_key: str) -> None:
    """A tenant's data set and its job's model, curves and files: through the API only for it;
    another tenant (its own key) and an anonymous client read and write none of them, through
    the API or MLflow (the stack's published ports)."""
    table = b"a,b,y\n" + b"".join(b"%d,%d,%d\n" % (i, i % 3, i % 2) for i in range(40))
    r = http.post("/v1/datasets", data={"target": "y"}, files={"file": ("mine.csv", table)})
    assert r.status_code == 201, r.text
    dataset = r.json()["id"]
    job = http.get(f"/v1/jobs/{job_id}").json()
    run_id = job["mlflow_run_id"]
    assert job["links"]["mlflow_run"] is None  # keys on: tenants are not sent to MLflow
    files = {a["path"] for a in http.get(f"/v1/jobs/{job_id}/artifacts").json()["artifacts"]}
    assert "model/MLmodel" in files, files
    model = http.get(f"/v1/jobs/{job_id}/artifacts/model/MLmodel")
    assert model.status_code == 200 and b"pytorch" in model.content  # the owner's, for contrast
    reads = [f"/v1/datasets/{dataset}", f"/v1/jobs/{job_id}", f"/v1/jobs/{job_id}/metrics",
             f"/v1/jobs/{job_id}/artifacts", f"/v1/jobs/{job_id}/artifacts/model/MLmodel"]  # fmt: skip
    url = str(http.base_url).rstrip("/")
    with (
        httpx.Client(base_url=url, timeout=30) as anonymous,
        httpx.Client(
            base_url=url, timeout=30, headers={"Authorization": f"Bearer {other_key}"}
        ) as other,
    ):
        for client, refused in ((anonymous, 401), (other, 404)):
            for path in reads:
                assert client.get(path).status_code == refused, (path, refused)
            assert client.post(f"/v1/jobs/{job_id}/cancel").status_code == refused
        listed = other.get("/v1/datasets").json()["items"]
        assert dataset not in {d["id"] for d in listed}
    # MLflow: no account for tenants; anonymous, or a tenant's key as a password, is refused
    data_run = http.get(f"/v1/datasets/{dataset}").json()["uri"].split("/")[1]  # runs:/RUN/…
    attempts: list[tuple[str, str, dict[str, Any]]] = [
        ("GET", f"/api/2.0/mlflow/runs/get?run_id={run_id}", {}),
        ("GET", f"/get-artifact?path=model/MLmodel&run_uuid={run_id}", {}),
        ("GET", f"/get-artifact?path=mine.csv&run_uuid={data_run}", {}),
        ("POST", "/api/2.0/mlflow/runs/search", {"json": {}}),
        ("POST", "/api/2.0/mlflow/runs/log-metric", {"json": {
            "run_id": run_id, "key": "loss/train", "value": 9.0, "timestamp": 0, "step": 1}}),
        ("PUT", f"/api/2.0/mlflow-artifacts/artifacts/{data_run}/mine.csv",
         {"content": b"a,b,y\n"}),
        ("POST", "/api/2.0/mlflow/registered-models/create", {"json": {"name": "ops.stolen"}}),
    ]  # fmt: skip
    for who in (None, ("others", other_key)):
        for method, path, body in attempts:
            r = httpx.request(method, mlflow_url + path, auth=who, timeout=30, **body)
            assert r.status_code == 401, (who and who[0], method, path, r.status_code)


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
