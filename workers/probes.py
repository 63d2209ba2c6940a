"""The Ray probes of ``/readyz``: each returns what it checked, or raises with why it failed.

The API asks Ray through these (it never imports ray itself); the database's probe is
``JobStore.ping``, MLflow's is ``workers.tracking.read.Tracking.ping``."""

from __future__ import annotations

import socket
import threading
from collections.abc import Callable
from urllib.parse import urlparse


class NotReady(RuntimeError):
    """A probe's refusal whose message gradq wrote for anyone to read (no exception text
    of a library, no address): ``/readyz`` shows it, where it shows other errors only as
    "not reachable"."""


def ray_head_reachable(address: str, timeout: float = 2.0) -> str:
    """A TCP connect to the Ray head (``host:port`` or ``ray://host:port``)."""
    if address == "auto":
        return "address 'auto': resolved by the dispatcher"
    parsed = urlparse(address if "://" in address else f"ray://{address}")
    host, port = parsed.hostname, parsed.port or (10001 if "://" in address else 6379)
    if host is None:
        raise ValueError(f"cannot read a host from Ray address {address!r}")
    with socket.create_connection((host, port), timeout=timeout):
        pass
    return f"Ray head {host}:{port} accepts connections"


def local_ray(thread: threading.Thread, down: Callable[[], str | None]) -> Callable[[], str]:
    """For ``gradq serve``: the in-process Ray is up (``down``: why it is not, while the
    dispatcher restarts it, as ``Dispatcher.local_ray_down``) and the dispatcher thread alive."""

    def probe() -> str:
        import ray

        why = down()
        if why is not None:
            raise NotReady(why)
        if not ray.is_initialized():
            raise NotReady("the local Ray is not running")
        if not thread.is_alive():
            raise NotReady("the dispatcher thread has stopped")
        cpus = ray.cluster_resources().get("CPU", 0.0)
        return f"local Ray with {cpus:g} CPU, dispatcher running"

    return probe
