"""Webhook delivery: which URLs may receive, how a delivery is signed, and the deliverer.

A URL is refused when its host resolves to a loopback, private, link-local, unspecified,
multicast or reserved address (:func:`check_url`), unless ``GRADQ_WEBHOOKS_ALLOW_PRIVATE``;
it is checked when the webhook is registered and again before every attempt, and the
attempt connects to the address just checked (a name that resolves elsewhere by then does
not reach a private address: DNS rebinding).

Each delivery is a POST of the event as JSON (:func:`event_body`) with the headers
``Gradq-Event-Id`` (the same in every attempt of the event), ``Gradq-Event`` (its type)
and ``Gradq-Signature: t=<unix time>,v1=<hex>``, where ``v1`` is the HMAC-SHA256, keyed by
the webhook's secret, of ``t + "." + body`` (:func:`signature`). A 2xx answer delivers it;
anything else (another status, no answer, a refused address) is retried after
``min(cap, base * 2**(attempt - 1))`` seconds, times a random factor in [0.5, 1), until
``GRADQ_WEBHOOKS_MAX_ATTEMPTS``. Redirects are not followed.

The :class:`Deliverer` is a thread of the API process (started by its lifespan): it takes
due deliveries from the outbox by a lease (``db.webhooks``), so several API processes
share the work and never send one attempt twice.
"""

from __future__ import annotations

import hashlib
import hmac
import ipaddress
import json
import logging
import os
import random
import socket
import threading
import uuid
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from datetime import datetime, timedelta
from typing import Any
from urllib.parse import urlsplit

import httpx

from api.present import public_error
from api.settings import Settings
from db.errors import JobNotFound
from db.models import utcnow
from db.store import JobStore
from db.sweeps import SweepNotFound, SweepStore
from db.webhooks import DueDelivery, WebhookStore

log = logging.getLogger("gradq.webhooks")

Resolver = Callable[..., list[Any]]
MAX_URL_LENGTH = 2000


class UnsafeUrl(ValueError):
    """A URL gradq does not send to; the message says why."""


def _blocked(address: str) -> bool:
    """Whether ``address`` is not a public one: anything Python does not call global
    (private, loopback, link-local, shared 100.64/10, reserved, documentation ranges, …) or
    multicast, also an IPv4 address wrapped in an IPv6 one (mapped, 6to4, Teredo)."""
    ip: ipaddress.IPv4Address | ipaddress.IPv6Address
    ip = ipaddress.ip_address(address.split("%", 1)[0])  # an IPv6 scope id
    if isinstance(ip, ipaddress.IPv6Address):
        if ip.ipv4_mapped is not None:
            return _blocked(str(ip.ipv4_mapped))
        inner = ip.sixtofour or (ip.teredo[1] if ip.teredo else None)
        if inner is not None and _blocked(str(inner)):
            return True
    return not ip.is_global or ip.is_multicast


def check_url(
    url: str, *, allow_private: bool, resolve: Resolver = socket.getaddrinfo
) -> list[str]:
    """The addresses ``url``'s host resolves to, when gradq may send to it: an http(s) URL
    with a host, whose every address is public (any address with ``allow_private``).
    Raises :class:`UnsafeUrl` saying why not."""
    if len(url) > MAX_URL_LENGTH:
        raise UnsafeUrl(f"at most {MAX_URL_LENGTH} characters")
    try:
        parts = urlsplit(url)
        port = parts.port or (443 if parts.scheme == "https" else 80)
    except ValueError as exc:
        raise UnsafeUrl(f"not a URL: {exc}") from None
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise UnsafeUrl(f"an http:// or https:// URL with a host, not {url!r}")
    host = parts.hostname
    try:
        found = resolve(host, port, type=socket.SOCK_STREAM)
    except (OSError, ValueError) as exc:  # ValueError: a NUL, an IDNA label too long
        raise UnsafeUrl(f"its host {host!r} does not resolve ({exc})") from None
    addresses = list(dict.fromkeys(str(info[4][0]) for info in found))
    if not addresses:
        raise UnsafeUrl(f"its host {host!r} does not resolve")
    if not allow_private:
        bad = [a for a in addresses if _blocked(a)]
        if bad:
            raise UnsafeUrl(
                f"its host {host} resolves to {bad[0]}, a loopback, private or link-local "
                "address: gradq sends only to public addresses"
            )
    return addresses


def signature(secret: str, timestamp: int, body: bytes) -> str:
    """The ``v1`` of ``Gradq-Signature``: hex HMAC-SHA256 of ``timestamp + "." + body``."""
    message = str(timestamp).encode() + b"." + body
    return hmac.new(secret.encode(), message, hashlib.sha256).hexdigest()


def backoff(attempt: int, *, base: float, cap: float, rand: Callable[[], float]) -> float:
    """Seconds to wait after failed attempt ``attempt`` (1, 2, …): exponential up to ``cap``,
    times a jitter factor in [0.5, 1) (``rand()`` in [0, 1))."""
    delay = min(cap, base * 2.0 ** min(attempt - 1, 60))
    return delay * (0.5 + rand() / 2)


def event_body(due: DueDelivery, jobs: JobStore, sweeps: SweepStore) -> bytes:
    """The event as the receiver gets it: ``{id, type, created_at, data: {job|sweep}}``
    with the job's (or sweep's) id, name, status and outcome."""
    kind = due.event.split(".", 1)[0]
    subject: dict[str, Any] = {"id": due.subject_id}
    try:
        if kind == "job":
            job = jobs.get(job_id=due.subject_id, tenant=due.tenant)
            subject.update(
                name=job.name, status=job.status.value, attempt=job.attempt, result=job.result,
                error=public_error(job.error), mlflow_run_id=job.mlflow_run_id,
                finished_at=job.finished_at.isoformat() if job.finished_at else None,
            )  # fmt: skip
        else:
            sweep = sweeps.get(sweep_id=due.subject_id, tenant=due.tenant)
            subject.update(
                name=sweep.name, status=sweep.status, best=sweep.best, error=sweep.error,
                finished_at=sweep.finished_at.isoformat() if sweep.finished_at else None,
            )  # fmt: skip
    except (JobNotFound, SweepNotFound):
        pass  # gone since: the event still says which and what
    event = {
        "id": due.event_id,
        "type": due.event,
        "created_at": due.occurred_at.isoformat(),
        "data": {kind: subject},
    }
    return json.dumps(event, separators=(",", ":"), default=str).encode()


# Errors raised before the request left: the receiver got nothing (any other error of a
# request may come after it arrived: its outcome is unknown)
NOT_SENT = (httpx.ConnectError, httpx.ConnectTimeout, httpx.UnsupportedProtocol)


class Deliverer:
    """Delivers the outbox's due events: a thread that claims up to
    ``webhooks_concurrency`` deliveries at a time, sends them side by side and records each
    outcome; it waits ``webhooks_poll_seconds`` when nothing is due."""

    def __init__(
        self,
        settings: Settings,
        webhooks: WebhookStore,
        jobs: JobStore,
        sweeps: SweepStore,
        *,
        resolve: Resolver = socket.getaddrinfo,
    ) -> None:
        self.settings, self.webhooks, self.jobs, self.sweeps = settings, webhooks, jobs, sweeps
        self.resolve = resolve
        self.owner = f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:8]}"
        # the longest an attempt can take: connect, write, read (each up to the timeout)
        self.lease_seconds = 4 * settings.webhooks_timeout_seconds + 30
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._pool = ThreadPoolExecutor(
            settings.webhooks_concurrency, thread_name_prefix="gradq-webhook"
        )
        self._client = httpx.Client(
            timeout=settings.webhooks_timeout_seconds, follow_redirects=False, trust_env=False
        )

    def start(self) -> None:
        self._thread = threading.Thread(target=self._loop, name="gradq-webhooks", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        """Stop taking deliveries; wait for the attempts under way, then close."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join()
        self._pool.shutdown(wait=True)
        self._client.close()

    def _loop(self) -> None:
        failing = False
        while not self._stop.is_set():
            try:
                taken = self.run_once()
                if failing:
                    log.warning("webhook deliveries: going on")
                failing = False
            except Exception:  # the database away, say: try again after a pause
                if not failing:  # said once until it works again
                    log.exception("webhook deliveries: a round failed; trying again")
                failing, taken = True, 0
            if not taken:
                self._stop.wait(self.settings.webhooks_poll_seconds)

    def run_once(self) -> int:
        """Claim the due deliveries (at most ``webhooks_concurrency``) and attempt each;
        how many were attempted."""
        due = self.webhooks.claim(
            owner=self.owner,
            lease_seconds=self.lease_seconds,
            limit=self.settings.webhooks_concurrency,
        )
        list(self._pool.map(self.attempt, due))
        return len(due)

    def attempt(self, due: DueDelivery) -> None:
        """One attempt of ``due``, its outcome recorded (fenced by the lease)."""
        status, error, uncertain = self.send(due)
        delivered = status is not None and 200 <= status < 300
        retry_at: datetime | None = None
        if not delivered and due.attempt < self.settings.webhooks_max_attempts:
            wait = backoff(
                due.attempt,
                base=self.settings.webhooks_backoff_seconds,
                cap=self.settings.webhooks_backoff_cap_seconds,
                rand=random.random,
            )
            retry_at = utcnow() + timedelta(seconds=wait)
        if error is None and not delivered:
            error = f"HTTP {status}"
        self.webhooks.record(
            delivery_id=due.id, owner=self.owner, attempt=due.attempt, delivered=delivered,
            status_code=status, error=error, uncertain=uncertain, retry_at=retry_at,
        )  # fmt: skip

    def send(self, due: DueDelivery) -> tuple[int | None, str | None, bool]:
        """POST the signed event to the URL, at an address checked now: (status code or
        None, error or None, whether the receiver may have got it without answering)."""
        try:
            addresses = check_url(
                due.url, allow_private=self.settings.webhooks_allow_private, resolve=self.resolve
            )
        except UnsafeUrl as exc:
            return None, f"refused: {exc}", False
        body = event_body(due, self.jobs, self.sweeps)
        now = int(utcnow().timestamp())
        url = httpx.URL(due.url)
        headers = {
            "Content-Type": "application/json",
            "User-Agent": "gradq-webhooks/1",
            "Host": url.netloc.decode("ascii"),
            "Gradq-Event-Id": due.event_id,
            "Gradq-Event": due.event,
            "Gradq-Signature": f"t={now},v1={signature(due.secret, now, body)}",
        }
        pinned = url.copy_with(host=addresses[0].split("%", 1)[0])
        extensions = {"sni_hostname": url.host} if url.scheme == "https" else {}
        try:
            answer = self._client.post(pinned, content=body, headers=headers, extensions=extensions)
        except NOT_SENT as exc:
            return None, _said(exc), False
        except httpx.HTTPError as exc:  # sent, or partly: it may have arrived
            return None, _said(exc), True
        return answer.status_code, None, False


def _said(exc: Exception) -> str:
    return f"{type(exc).__name__}: {exc}"[:500]
