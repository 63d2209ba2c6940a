"""Processes of a natively booted gradq deployment, for the tests that start and break one
(the topology test, the chaos suite): each process in its own process group, stopped by
group and then by pid for any descendant left; nothing this module did not start is touched.
"""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import psycopg
from sqlalchemy import make_url


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def libpq(url: str) -> str:
    return make_url(url).set(drivername="postgresql").render_as_string(hide_password=False)


@dataclass
class Stack:
    """The processes this test started, in start order; stopped in reverse."""

    folder: Path
    ray_temp: Path
    processes: dict[str, subprocess.Popen[bytes]] = field(default_factory=dict)
    stopped: set[str] = field(default_factory=set)

    def dead(self) -> list[str]:
        """Processes that exited although the test did not stop them."""
        return [
            n for n, p in self.processes.items() if n not in self.stopped and p.poll() is not None
        ]

    def start(self, name: str, command: list[str], env: dict[str, str]) -> None:
        log = (self.folder / f"{name}.log").open("wb")
        self.processes[name] = subprocess.Popen(
            command, env=env, cwd=self.folder, stdout=log, stderr=subprocess.STDOUT,
            start_new_session=True,
        )  # fmt: skip

    def log(self, name: str, tail: int = 3000) -> str:
        path = self.folder / f"{name}.log"
        return path.read_text(errors="replace")[-tail:] if path.exists() else ""

    def logs(self) -> str:
        return "\n".join(f"--- {name}\n{self.log(name, 1500)}" for name in self.processes)

    def stop(self, name: str, grace: float = 15) -> None:
        self.stopped.add(name)
        process = self.processes[name]
        family = descendants(process.pid)
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, signal.SIGTERM)
        try:
            process.wait(timeout=grace)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(process.pid, signal.SIGKILL)
            process.wait(timeout=10)
        kill(family, grace=5)

    def stop_all(self) -> None:
        for name in reversed(list(self.processes)):
            with contextlib.suppress(Exception):
                self.stop(name)
        # Ray daemons this test's nodes started in sessions of their own: found by our temp dir.
        ours = [pid for pid, (_, cmd) in processes().items() if str(self.ray_temp) in cmd]
        kill(ours, grace=5)


def processes() -> dict[int, tuple[int, str]]:
    """pid -> (parent pid, command line), from /proc (no psutil in the environment)."""
    table: dict[int, tuple[int, str]] = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        with contextlib.suppress(OSError, ValueError, IndexError):
            stat = (entry / "stat").read_text()
            ppid = int(stat[stat.rindex(")") + 2 :].split()[1])
            cmdline = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
            table[int(entry.name)] = (ppid, cmdline)
    return table


def descendants(pid: int) -> list[int]:
    table = processes()
    found: list[int] = []
    frontier = [pid]
    while frontier:
        parent = frontier.pop()
        children = [p for p, (ppid, _) in table.items() if ppid == parent]
        found += children
        frontier += children
    return found


def kill(pids: list[int], grace: float) -> None:
    """SIGTERM these (our own) processes, then SIGKILL whichever is left after ``grace``."""
    for pid in pids:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.kill(pid, signal.SIGTERM)
    deadline = time.monotonic() + grace
    while time.monotonic() < deadline and any(alive(p) for p in pids):
        time.sleep(0.2)
    for pid in pids:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.kill(pid, signal.SIGKILL)


def alive(pid: int) -> bool:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat[stat.rindex(")") + 2] != "Z"


def wait_for(what: str, check: Callable[[], Any], timeout: float, stack: Stack) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if stack.dead():
            raise AssertionError(f"{stack.dead()} exited, waiting for {what}\n{stack.logs()}")
        with contextlib.suppress(Exception):
            value = check()
            if value:
                return value
        time.sleep(0.5)
    raise AssertionError(f"timed out after {timeout:g} s waiting for {what}\n{stack.logs()}")


@contextlib.contextmanager
def databases(base: str) -> Iterator[tuple[str, str]]:
    """Fresh ``gradq_<hex>`` and ``mlflow_<hex>`` databases on the test server, dropped after."""
    suffix = uuid.uuid4().hex[:12]
    names = (f"gradq_{suffix}", f"mlflow_{suffix}")
    with psycopg.connect(libpq(base), autocommit=True) as admin:
        for name in names:
            admin.execute(f"CREATE DATABASE {name}")
    urls = tuple(
        make_url(base).set(database=n).render_as_string(hide_password=False) for n in names
    )
    try:
        yield urls[0], urls[1]
    finally:
        with psycopg.connect(libpq(base), autocommit=True) as admin:
            for name in names:
                admin.execute(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)")


def ray_ports() -> list[str]:
    return [
        "--node-ip-address=127.0.0.1",
        f"--node-manager-port={free_port()}", f"--object-manager-port={free_port()}",
        f"--dashboard-agent-listen-port={free_port()}", f"--dashboard-agent-grpc-port={free_port()}",
        f"--metrics-export-port={free_port()}", f"--runtime-env-agent-port={free_port()}",
    ]  # fmt: skip
