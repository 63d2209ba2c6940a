"""Processes of a natively booted gradq deployment, for the tests that start and break one
(the topology test, the chaos suite): each process in its own process group, stopped by
group and then by pid for any descendant left; nothing this module did not start is touched.
"""

from __future__ import annotations

import contextlib
import ipaddress
import os
import re
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
    """A port free now, for the few servers that cannot bind port 0 and report it (a private
    PostgreSQL cluster): another process may take it before they bind, so callers retry."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


SERVING = re.compile(rb"Uvicorn running on http://127\.0\.0\.1:(\d+)")


def served_port(log: Path, process: subprocess.Popen[bytes], timeout: float = 180) -> int:
    """The port a server started with ``--port 0`` bound, read from uvicorn's start line in its
    log (``gradq serve``/``api``, ``mlflow server``): no port is chosen before it binds, so no
    other process can take it in between."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        found = SERVING.search(log.read_bytes()) if log.exists() else None
        if found:
            return int(found.group(1))
        if process.poll() is not None:
            raise AssertionError(f"{process.args!r} exited before serving:\n{_tail(log)}")
        time.sleep(0.2)
    raise AssertionError(f"{process.args!r} did not serve in {timeout:g} s:\n{_tail(log)}")


def _tail(log: Path) -> str:
    return log.read_text(errors="replace")[-3000:] if log.exists() else "(no log)"


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

    def served_port(self, name: str, timeout: float = 180) -> int:
        """The port ``name``, started with ``--port 0``, bound (see :func:`served_port`)."""
        return served_port(self.folder / f"{name}.log", self.processes[name], timeout)

    def start_server(
        self, name: str, command: list[str], env: dict[str, str], port: int = 0, tries: int = 10
    ) -> int:
        """Start an HTTP server (``gradq serve``/``api``, ``mlflow server``) whose ``command``
        ends without its port, on ``port`` — 0: a free one it binds itself and names in its
        log — and return the port it serves on. A restart on a given port (clients know it)
        is tried again, a second apart, while another process still holds the port."""
        for attempt in range(tries):
            run = name if attempt == 0 else f"{name}-try{attempt + 1}"
            self.start(run, [*command, "--port", str(port)], env)
            try:
                bound = self.served_port(run)
            except AssertionError:
                taken = "address already in use" in self.log(run).lower()
                if port == 0 or not taken or attempt + 1 == tries:
                    raise
                self.stopped.add(run)  # it exited
                time.sleep(1.0)
                continue
            if run != name:  # later steps know the server by its name
                self.stopped.discard(name)
                self.processes[name] = self.processes.pop(run)
                self.folder.joinpath(f"{run}.log").replace(self.folder / f"{name}.log")
            return bound
        raise AssertionError("unreachable")

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

    def pids(self) -> list[int]:
        """Every live process of this stack: those it started, their descendants, and Ray's
        daemons of its nodes (in sessions of their own: found by the stack's Ray temp dir)."""
        found: set[int] = set()
        for name, process in self.processes.items():
            if name not in self.stopped and process.poll() is None:
                found |= {process.pid, *descendants(process.pid)}
        found |= {pid for pid, (_, cmd) in processes().items() if str(self.ray_temp) in cmd}
        return sorted(p for p in found if alive(p))

    def assert_loopback_only(self) -> None:
        """Every socket the stack's processes listen on (TCP) or bound (UDP) is on 127.0.0.1."""
        bad = off_loopback(self.pids())
        assert not bad, f"listening off 127.0.0.1: {bad}"

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


def listening(pids: list[int]) -> list[tuple[int, str, str, int]]:
    """(pid, command, address, port) of every TCP socket in LISTEN and every bound UDP socket
    that these processes hold, from ``/proc/net/{tcp,udp}{,6}`` and their file descriptors."""
    sockets: dict[str, tuple[str, int]] = {}
    for name in ("tcp", "tcp6", "udp", "udp6"):
        with contextlib.suppress(OSError):
            for line in Path(f"/proc/net/{name}").read_text().splitlines()[1:]:
                fields = line.split()
                local, state, inode = fields[1], fields[3], fields[9]
                if name.startswith("tcp") and state != "0A":  # 0A: LISTEN
                    continue
                address, port = local.split(":")
                if int(port, 16) == 0:
                    continue
                sockets[inode] = (_proc_address(address), int(port, 16))
    table = processes()
    out: list[tuple[int, str, str, int]] = []
    for pid in pids:
        with contextlib.suppress(OSError):
            for fd in Path(f"/proc/{pid}/fd").iterdir():
                with contextlib.suppress(OSError):
                    target = os.readlink(fd)
                    if target.startswith("socket:[") and target[8:-1] in sockets:
                        address, port = sockets[target[8:-1]]
                        out.append((pid, table.get(pid, (0, "?"))[1][:120], address, port))
    return out


def _proc_address(hex_address: str) -> str:
    """``/proc/net``'s hex address (host byte order per 32-bit word) as text; an IPv4-mapped
    IPv6 address as its IPv4 form."""
    raw = bytes.fromhex(hex_address)
    words = b"".join(raw[i : i + 4][::-1] for i in range(0, len(raw), 4))
    address = ipaddress.ip_address(words)
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        return str(address.ipv4_mapped)
    return str(address)


def off_loopback(pids: list[int]) -> list[tuple[int, str, str, int]]:
    """The sockets of :func:`listening` bound to anything but 127.0.0.1."""
    return [s for s in listening(pids) if s[2] != "127.0.0.1"]


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
