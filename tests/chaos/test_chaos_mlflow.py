"""Fault 4: the MLflow tracking server is killed for 30 s while jobs train, then started
again on the same store and port.

``gradq serve`` tracks into ``mlflow server --serve-artifacts`` (SQLite backend store,
artifacts in a folder). While the server is away training goes on (progress keeps moving in
the database), metric points and checkpoints stay buffered and are retried; once it is back
they arrive: every job ends ``succeeded`` with each learning-curve step exactly once, its
checkpoint and its model. A job submitted during the outage runs too, and the API answers
(job status without the MLflow link, curves with a 503) instead of waiting on MLflow.
"""

from __future__ import annotations

import time
from pathlib import Path

import httpx
import pytest
from chaos_harness import (
    ServerErrors,
    all_terminal,
    audit,
    chaos_env,
    digits,
    iris,
    jobs,
    not_ready,
    record,
    wait_until,
)
from deploy_stack import Stack
from gradq_service import GRADQ, service_env
from mlflow import MlflowClient

pytestmark = pytest.mark.timeout(360)

BIN = Path(GRADQ).parent
OUTAGE_S = 30.0


def mlflow_server(stack: Stack, name: str, port: int = 0) -> int:
    """``mlflow server`` on ``port`` (0: a free one); returns the port it serves on."""
    folder = stack.folder
    bound = stack.start_server(name, [
        str(BIN / "mlflow"), "server", "--backend-store-uri", f"sqlite:///{folder}/mlflow.db",
        "--serve-artifacts", "--artifacts-destination", str(folder / "mlartifacts"),
        "--host", "127.0.0.1", "--workers", "1",
    ], service_env(folder), port)  # fmt: skip
    wait_until(f"{name} to answer", lambda: httpx.get(
        f"http://127.0.0.1:{bound}/health", timeout=2).status_code == 200, 120,
        context=stack.logs)  # fmt: skip
    return bound


def outage_answer(response: httpx.Response) -> bool:
    """The 503 the outage is meant to give: a job's curves while MLflow is away (and /readyz's
    "not ready yet" while the service boots)."""
    path = response.request.url.path
    curves = path.startswith("/v1/jobs/") and path.endswith("/metrics")
    return not_ready(response) or (response.status_code == 503 and curves)


def test_mlflow_server_down_30s_training_goes_on_and_nothing_is_lost(stack: Stack) -> None:
    mlflow_port = mlflow_server(stack, "mlflow")
    tracking = f"http://127.0.0.1:{mlflow_port}"
    env = chaos_env(stack.folder / "gradq", GRADQ_MLFLOW_TRACKING_URI=tracking,
                      GRADQ_LEASE_SECONDS="10", GRADQ_HEARTBEAT_SECONDS="0.5",
                      RAY_TMPDIR=str(stack.ray_temp))  # fmt: skip
    port = stack.start_server("serve", [GRADQ, "serve", "--no-mlflow-ui"], env)
    accepted: dict[str, int] = {}
    errors = ServerErrors(expected=outage_answer)  # the 5xx answers this test's client got
    with errors.client(f"http://127.0.0.1:{port}") as http:
        wait_until("gradq serve", lambda: http.get("/readyz").is_success, 180,
                   context=stack.logs)  # fmt: skip
        stack.assert_loopback_only()

        def submit(spec: dict) -> str:
            r = http.post("/v1/jobs", json=spec)
            assert r.status_code == 201, r.text
            accepted[r.json()["id"]] = spec["optimizer"]["epochs"]
            return str(r.json()["id"])

        long_id = submit(digits("through-the-outage", 150))
        short_id = submit(iris("before", epochs=30))
        wait_until("the long job to train", lambda: (jobs(http, [long_id])[long_id][
            "progress"] or {}).get("epoch", 0) >= 2, 180, context=stack.logs)  # fmt: skip
        stack.stop("mlflow", grace=0)  # killed: connections are refused from now on
        down_at = time.monotonic()
        epoch_at_stop = jobs(http, [long_id])[long_id]["progress"]["epoch"]
        during = submit(iris("during", epochs=8, seed=3))
        curves = http.get(f"/v1/jobs/{long_id}/metrics")  # answers, without waiting on MLflow
        assert curves.status_code == 503, curves.text
        assert curves.json()["error"]["code"] == "mlflow_unavailable", curves.text
        while time.monotonic() - down_at < OUTAGE_S:
            now = jobs(http, list(accepted))  # the API keeps answering job status
            time.sleep(1.0)
        progressed = now[long_id]["progress"]["epoch"] - epoch_at_stop
        assert progressed > 0 or now[long_id]["status"] == "succeeded", now[long_id]
        in_flight = sum(j["status"] not in ("succeeded", "failed", "cancelled")
                        for j in now.values())  # fmt: skip
        mlflow_server(stack, "mlflow-2", mlflow_port)
        back_at = time.monotonic()
        client = MlflowClient(tracking_uri=tracking)
        run_id = now[long_id]["mlflow_run_id"]
        reached = now[long_id]["progress"]["epoch"]
        wait_until("the epochs trained during the outage to reach MLflow", lambda: max(
            (m.step for m in client.get_metric_history(run_id, "loss/train")), default=0
        ) >= reached, 300, context=stack.logs)  # fmt: skip
        recover_s = time.monotonic() - back_at
        final = wait_until("every job to end", lambda: all_terminal(http, list(accepted)), 300,
                           context=stack.logs)  # fmt: skip
        checked = audit(http, tracking, accepted)
        record({
            "fault": "MLflow server SIGKILL, 30 s down, restart on the same store/port",
            "in_flight": in_flight, "accepted": len(accepted), **checked.counts,
            "http_5xx": errors.count, "recover_s": round(recover_s, 1),
            "checked": f"training went on (+{progressed} epochs while down); buffered metrics "
                       "and checkpoints delivered: steps 1..n once, checkpoint and model in "
                       "every run; API answered",
        })  # fmt: skip
        checked.assert_clean()
        errors.assert_none()
        for job_id in (long_id, short_id, during):
            run_id = final[job_id]["mlflow_run_id"]
            assert client.get_run(run_id).data.tags.get("gradq.model_uri"), job_id
            listed = {f.path for f in client.list_artifacts(run_id, "checkpoints/last")}
            assert "checkpoints/last/checkpoint.pt" in listed, (job_id, listed)
