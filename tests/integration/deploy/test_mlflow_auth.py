"""The compose deployment's MLflow authentication, on a real ``mlflow server --app-name
basic-auth`` on 127.0.0.1 with docker/mlflow-auth.ini (its user store moved to the test's
folder) and docker/mlflow-service-account.py run as the compose service runs it.

MLflow refuses a caller without a user or with a wrong password; the script, signed in as
the admin, makes gradq's own account, and sets its password again when run with a new one;
another user that the admin makes sees nothing of it;
gradq's tracking read interface, signed in with that account through
``MLFLOW_TRACKING_USERNAME`` / ``MLFLOW_TRACKING_PASSWORD`` as compose sets them, stores a
data set and lists and fetches its file over MLflow's HTTP artifact service, and writes into
an experiment the admin made before the account existed."""

from __future__ import annotations

import os
import re
import secrets
import subprocess
import sys
from pathlib import Path

import httpx
import pytest
from deploy_stack import Stack, wait_for
from mlflow import MlflowClient
from mlflow.server.auth.client import AuthServiceClient

from workers.tracking.read import Tracking

pytestmark = [pytest.mark.slow, pytest.mark.timeout(300)]

BIN = Path(sys.executable).parent
DOCKER = Path(__file__).resolve().parents[3] / "docker"
ADMIN = "admin"
SEARCH = "/api/2.0/mlflow/experiments/search?max_results=5"


def test_gradq_signs_in_to_mlflow_with_its_own_account(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    config = tmp_path / "auth.ini"
    config.write_text(
        re.sub(
            r"^database_uri = .*$",
            f"database_uri = sqlite:///{tmp_path}/basic_auth.db",
            (DOCKER / "mlflow-auth.ini").read_text(),
            flags=re.MULTILINE,
        )
    )
    admin_password = secrets.token_urlsafe(16)
    plain = {k: v for k, v in os.environ.items() if not k.startswith(("GRADQ_", "MLFLOW_"))}
    stack = Stack(folder=tmp_path, ray_temp=tmp_path / "no-ray")
    server_env = {**plain, "MLFLOW_AUTH_CONFIG_PATH": str(config),
                  "MLFLOW_AUTH_ADMIN_USERNAME": ADMIN,
                  "MLFLOW_AUTH_ADMIN_PASSWORD": admin_password,
                  "MLFLOW_FLASK_SERVER_SECRET_KEY": secrets.token_hex(16)}  # fmt: skip
    try:
        port = stack.start_server("mlflow", [
            str(BIN / "mlflow"), "server", "--app-name", "basic-auth",
            "--backend-store-uri", f"sqlite:///{tmp_path}/mlflow.db",
            "--serve-artifacts", "--artifacts-destination", str(tmp_path / "mlartifacts"),
            "--host", "127.0.0.1", "--workers", "1",
        ], server_env)  # fmt: skip
        url = f"http://127.0.0.1:{port}"
        wait_for("MLflow", lambda: httpx.get(f"{url}/health", timeout=2).is_success, 120, stack)
        check_accounts(url, admin_password, tmp_path, plain, monkeypatch)
    finally:
        stack.stop_all()


def check_accounts(
    url: str,
    admin_password: str,
    tmp_path: Path,
    plain: dict[str, str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    assert httpx.get(url + SEARCH).status_code == 401
    assert httpx.get(url + SEARCH, auth=(ADMIN, "wrong")).status_code == 401
    monkeypatch.setenv("MLFLOW_TRACKING_USERNAME", ADMIN)
    monkeypatch.setenv("MLFLOW_TRACKING_PASSWORD", admin_password)
    earlier = MlflowClient(url).create_experiment("made-before-the-account")

    def account(username: str, password: str) -> subprocess.CompletedProcess[str]:
        env = {**plain, "MLFLOW_TRACKING_URI": url, "MLFLOW_TRACKING_USERNAME": ADMIN,
               "MLFLOW_TRACKING_PASSWORD": admin_password,
               "SERVICE_ACCOUNT_USERNAME": username, "SERVICE_ACCOUNT_PASSWORD": password}  # fmt: skip
        return subprocess.run(
            [sys.executable, str(DOCKER / "mlflow-service-account.py")],
            env=env, capture_output=True, text=True, timeout=120,
        )  # fmt: skip

    first, second = secrets.token_urlsafe(16), secrets.token_urlsafe(16)
    made = account("gradq", first)
    assert (made.returncode, made.stdout.strip()) == (0, "created MLflow user gradq"), made.stderr
    refused = account(ADMIN, first)
    assert refused.returncode == 2 and "must not be the admin" in refused.stderr

    monkeypatch.setenv("MLFLOW_TRACKING_USERNAME", "gradq")
    monkeypatch.setenv("MLFLOW_TRACKING_PASSWORD", first)
    tracking = Tracking(tracking_uri=url, artifact_root=None, ui_url=url)
    data = b"x,y\n1,0\n2,1\n"
    uri = tracking.store_dataset(data=data, filename="d.csv", tenant="a", name="d")
    run_id = uri.split("/")[1]
    assert [(a.path, a.size) for a in tracking.artifacts(run_id)] == [("d.csv", len(data))]
    local = tracking.fetch_artifact(run_id, "d.csv", str(tmp_path / "fetched"))
    assert local is not None and local.read_bytes() == data
    run_url = f"{url}/api/2.0/mlflow/runs/get?run_id={run_id}"
    assert httpx.get(run_url).status_code == 401
    assert httpx.get(run_url, auth=("gradq", first)).status_code == 200
    # any other user sees nothing until an admin grants it (default_permission)
    viewer = secrets.token_urlsafe(16)
    monkeypatch.setenv("MLFLOW_TRACKING_USERNAME", ADMIN)
    monkeypatch.setenv("MLFLOW_TRACKING_PASSWORD", admin_password)
    AuthServiceClient(url).create_user("viewer", viewer)
    assert httpx.get(run_url, auth=("viewer", viewer)).status_code == 403
    monkeypatch.setenv("MLFLOW_TRACKING_USERNAME", "gradq")
    monkeypatch.setenv("MLFLOW_TRACKING_PASSWORD", first)
    client = MlflowClient(url)
    run = client.create_run(earlier).info.run_id
    client.log_metric(run, "loss/val", 0.5, step=1)
    assert client.get_run(run).data.metrics == {"loss/val": 0.5}

    again = account("gradq", second)
    assert (again.returncode, again.stdout.strip()) == (0, "set the password of MLflow user gradq")
    assert httpx.get(url + SEARCH, auth=("gradq", first)).status_code == 401
    assert httpx.get(url + SEARCH, auth=("gradq", second)).status_code == 200
