"""Helpers of the acceptance tests: the service from outside, as a user runs it: ``gradq serve`` / ``gradq api`` as a
subprocess in its own process group (killed at the end, even on failure), driven over HTTP
with httpx and through the ``gradq`` command."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx

ROOT = Path(__file__).resolve().parents[2]
if str(ROOT / "tests" / "integration" / "deploy") not in sys.path:
    sys.path.insert(0, str(ROOT / "tests" / "integration" / "deploy"))
from deploy_stack import descendants, off_loopback, served_port  # noqa: E402
from deploy_stack import free_port as free_port  # noqa: E402  (for the tests that start servers)

GRADQ = str(Path(sys.executable).with_name("gradq"))
BOOT_TIMEOUT_S = 180.0


def service_env(folder: Path, **extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("GRADQ_")}
    env.update(
        GRADQ_DATABASE_URL=f"sqlite:///{folder}/gradq.db",
        GRADQ_MLFLOW_TRACKING_URI=f"sqlite:///{folder}/mlflow.db",
        GRADQ_RAY_NUM_CPUS="2",
        GRADQ_LEASE_SECONDS="20",
        GRADQ_HEARTBEAT_SECONDS="1",
        RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER="0",
        PYTHONUNBUFFERED="1",
        **extra,
    )
    return env


@dataclass
class Service:
    url: str
    folder: Path
    env: dict[str, str]
    process: subprocess.Popen[bytes]
    log: Path
    headers: dict[str, str] = field(default_factory=dict)

    def client(self, key: str | None = None) -> httpx.Client:
        headers = {"Authorization": f"Bearer {key}"} if key else dict(self.headers)
        return httpx.Client(base_url=self.url, headers=headers, timeout=60)

    def gradq(
        self, *args: str, timeout: float = 240, columns: int | None = None
    ) -> subprocess.CompletedProcess[str]:
        """The ``gradq`` command against this service (or its database); ``columns``: the
        terminal width its tables are fitted to."""
        env = {**self.env, "GRADQ_URL": self.url}
        if columns is not None:
            env["COLUMNS"] = str(columns)
        return subprocess.run(
            [GRADQ, *args], env=env, cwd=self.folder, capture_output=True, text=True,
            timeout=timeout,
        )  # fmt: skip

    def log_tail(self) -> str:
        return self.log.read_text(errors="replace")[-4000:]

    def wait_job(self, job_id: str, statuses: tuple[str, ...], timeout: float = 180) -> Any:
        deadline = time.monotonic() + timeout
        with self.client() as http:
            while time.monotonic() < deadline:
                job = http.get(f"/v1/jobs/{job_id}").json()
                if job["status"] in statuses:
                    return job
                time.sleep(0.3)
        raise AssertionError(f"job {job_id} never reached {statuses}: {job}\n{self.log_tail()}")


@contextlib.contextmanager
def running(
    command: list[str], folder: Path, env: dict[str, str], *, ready: str = "/readyz",
    headers: dict[str, str] | None = None,
) -> Iterator[Service]:  # fmt: skip
    """Start ``gradq <command> --port 0`` (it binds a free port and names it in its log), wait
    until ``ready`` answers 200, check that it and its children (a local Ray) listen on
    127.0.0.1 only, stop it."""
    log = folder / f"{command[0]}-{time.monotonic_ns()}.log"
    with log.open("wb") as out:
        process = subprocess.Popen(
            [GRADQ, *command, "--port", "0"], env=env, cwd=folder, stdout=out,
            stderr=subprocess.STDOUT, start_new_session=True,
        )  # fmt: skip
    try:
        port = served_port(log, process, BOOT_TIMEOUT_S)
        service = Service(
            f"http://127.0.0.1:{port}", folder, env, process, log, dict(headers or {})
        )
        _wait_ready(service, ready)
        bad = off_loopback([process.pid, *descendants(process.pid)])
        assert not bad, f"listening off 127.0.0.1: {bad}"
        yield service
    finally:
        stop(process)


def _wait_ready(service: Service, path: str) -> None:
    deadline = time.monotonic() + BOOT_TIMEOUT_S
    while time.monotonic() < deadline:
        if service.process.poll() is not None:
            raise AssertionError(f"the service exited: {service.log_tail()}")
        with contextlib.suppress(httpx.TransportError):
            if httpx.get(service.url + path, headers=service.headers, timeout=10).is_success:
                return
        time.sleep(0.5)
    raise AssertionError(
        f"the service was not ready in {BOOT_TIMEOUT_S:.0f} s: {service.log_tail()}"
    )


def stop(process: subprocess.Popen[bytes], grace: float = 40) -> int | None:
    """SIGTERM to the process group (a clean stop), then SIGKILL to whatever is left."""
    with contextlib.suppress(ProcessLookupError):
        os.killpg(process.pid, signal.SIGTERM)
    with contextlib.suppress(subprocess.TimeoutExpired):
        process.wait(timeout=grace)
    with contextlib.suppress(ProcessLookupError):
        os.killpg(process.pid, signal.SIGKILL)
    with contextlib.suppress(subprocess.TimeoutExpired):
        process.wait(timeout=10)
    return process.returncode
