"""Fixtures of the workers' integration tests: a local Ray, a real ``mlflow server``."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "deploy"))
from deploy_stack import kill, served_port

BIN = Path(sys.executable).parent


@pytest.fixture(scope="module")
def ray_local() -> Iterator[None]:
    """A local Ray of 2 CPUs (bound to 127.0.0.1 by RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER=0) for
    the module's tests."""
    import ray

    os.environ.setdefault("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    yield
    ray.shutdown()


@pytest.fixture(scope="module")
def mlflow_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """The URL of an ``mlflow server`` on a SQLite store, serving artifacts, on 127.0.0.1 and
    a port it chose; stopped after the module."""
    folder = tmp_path_factory.mktemp("mlflow-server")
    log = folder / "mlflow.log"
    with log.open("wb") as out:
        process = subprocess.Popen(
            [str(BIN / "mlflow"), "server", "--backend-store-uri",
             f"sqlite:///{folder}/mlflow.db", "--serve-artifacts", "--artifacts-destination",
             str(folder / "artifacts"), "--host", "127.0.0.1", "--port", "0",
             "--workers", "1"],
            stdout=out, stderr=subprocess.STDOUT, start_new_session=True, cwd=folder,
        )  # fmt: skip
    try:
        url = f"http://127.0.0.1:{served_port(log, process)}"
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            try:
                if httpx.get(f"{url}/health", timeout=2).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            time.sleep(0.3)
        yield url
    finally:
        kill([process.pid], grace=10)
