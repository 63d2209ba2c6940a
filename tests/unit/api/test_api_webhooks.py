"""``/v1/webhooks`` on a migrated SQLite file: a URL that reaches a loopback, private or
link-local address is refused (422 naming ``url``) unless the setting allows it, the secret
is shown at creation and rotation only, and another tenant's webhook is a 404. The address
check and the signature are also tested alone (``api.webhooks``)."""

from __future__ import annotations

import hashlib
import hmac
import re
import socket
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient

from api.webhooks import UnsafeUrl, backoff, check_url, signature
from db.keys import KeyStore
from db.session import make_engine


def bearer(key: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {key}"}


@pytest.mark.parametrize(
    ("url", "words"),
    [
        ("http://127.0.0.1:8080/hook", "resolves to 127.0.0.1, a loopback, private"),
        ("http://localhost/hook", "a loopback, private or link-local address"),
        ("http://10.1.2.3/hook", "resolves to 10.1.2.3"),
        ("http://169.254.169.254/latest/meta-data", "resolves to 169.254.169.254"),
        ("http://[::1]:9000/", "resolves to ::1"),
        ("http://[::ffff:127.0.0.1]/", "resolves to ::ffff:127.0.0.1"),
        ("ftp://example.com/hook", "an http:// or https:// URL with a host"),
        ("hook", "an http:// or https:// URL with a host"),
    ],
)
def test_a_url_that_is_not_public_is_refused_by_default(
    client: TestClient, url: str, words: str
) -> None:
    r = client.post("/v1/webhooks", json={"url": url})
    assert r.status_code == 422, r.text
    error = r.json()["error"]
    assert error["field"] == "url"
    assert words in error["message"]
    assert client.get("/v1/webhooks").json() == {"items": []}


def test_an_unknown_event_is_refused_naming_its_place(client: TestClient) -> None:
    r = client.post(
        "/v1/webhooks", json={"url": "https://example.com/", "events": ["job.*", "job.done"]}
    )
    assert r.status_code == 422
    assert r.json()["error"]["field"] == "events[1]"
    assert "not an event: 'job.done'" in r.json()["error"]["message"]
    r = client.post("/v1/webhooks", json={"url": "https://example.com/", "events": []})
    assert (r.status_code, r.json()["error"]["field"]) == (422, "events")
    r = client.post("/v1/webhooks", json={"events": ["*"]})
    assert (r.status_code, r.json()["error"]["field"]) == (422, "url")


def test_register_list_rotate_delete(make_client: Callable[..., TestClient]) -> None:
    client = make_client(webhooks_allow_private=True)
    r = client.post(
        "/v1/webhooks", json={"url": "http://127.0.0.1:9/hook", "events": ["sweep.*", "job.failed"]}
    )
    assert r.status_code == 201, r.text
    hook = r.json()
    assert hook["events"] == ["sweep.succeeded", "sweep.failed", "sweep.cancelled", "job.failed"]
    assert hook["secret"].startswith("whsec_") and len(hook["secret"]) > 40
    listed = client.get("/v1/webhooks").json()["items"]
    assert [(h["id"], h["secret"]) for h in listed] == [(hook["id"], None)]  # never shown again
    assert client.get(f"/v1/webhooks/{hook['id']}").json()["secret"] is None

    rotated = client.post(f"/v1/webhooks/{hook['id']}/rotate").json()
    assert rotated["secret"].startswith("whsec_") and rotated["secret"] != hook["secret"]
    assert rotated["rotated_at"] is not None
    log = client.get(f"/v1/webhooks/{hook['id']}/deliveries").json()
    assert log == {"items": [], "next_cursor": None}

    assert client.delete(f"/v1/webhooks/{hook['id']}").status_code == 204
    r = client.get(f"/v1/webhooks/{hook['id']}")
    assert (r.status_code, r.json()["error"]["code"]) == (404, "not_found")
    assert client.get("/v1/webhooks").json() == {"items": []}


def test_a_tenant_has_a_limited_number_of_webhooks(make_client: Callable[..., TestClient]) -> None:
    client = make_client(webhooks_allow_private=True, webhooks_max_per_tenant=2)
    for _ in range(2):
        assert client.post("/v1/webhooks", json={"url": "http://127.0.0.1:9/"}).status_code == 201
    r = client.post("/v1/webhooks", json={"url": "http://127.0.0.1:9/"})
    assert (r.status_code, r.json()["error"]["field"]) == (422, "url")
    assert "has 2 webhooks, the most it may" in r.json()["error"]["message"]


def test_another_tenants_webhook_answers_as_a_missing_one(
    make_client: Callable[..., TestClient], tmp_path: Path
) -> None:
    keys = KeyStore(make_engine(f"sqlite:///{tmp_path}/gradq.db"))
    _, a = keys.create(tenant="a")
    _, b = keys.create(tenant="b")
    client = make_client(auth="keys", webhooks_allow_private=True)
    hook = client.post("/v1/webhooks", json={"url": "http://127.0.0.1:9/"}, headers=bearer(a))
    hook_id = hook.json()["id"]
    missing = "00000000-0000-0000-0000-000000000000"
    for method, path in [
        ("GET", ""),
        ("DELETE", ""),
        ("POST", "/rotate"),
        ("GET", "/deliveries"),
    ]:
        theirs = client.request(method, f"/v1/webhooks/{hook_id}{path}", headers=bearer(b))
        absent = client.request(method, f"/v1/webhooks/{missing}{path}", headers=bearer(b))
        assert theirs.status_code == absent.status_code == 404
        assert theirs.json()["error"]["code"] == absent.json()["error"]["code"] == "not_found"
    assert client.get("/v1/webhooks", headers=bearer(b)).json() == {"items": []}
    mine = client.get("/v1/webhooks", headers=bearer(a)).json()["items"]
    assert [h["id"] for h in mine] == [hook_id]  # untouched by b's delete and rotate
    assert mine[0]["rotated_at"] is None


def resolver(address: str) -> Callable[..., list[Any]]:
    """A resolver that answers ``address`` for any name (the rebinding case)."""

    def resolve(host: str, port: int, **_: Any) -> list[Any]:
        family = socket.AF_INET6 if ":" in address else socket.AF_INET
        return [(family, socket.SOCK_STREAM, 6, "", (address, port))]

    return resolve


def test_a_name_is_judged_by_the_addresses_it_resolves_to() -> None:
    url = "https://hooks.example.org/x"
    assert check_url(url, allow_private=False, resolve=resolver("93.184.216.34")) == [
        "93.184.216.34"
    ]
    for private in ("10.0.0.7", "192.168.1.1", "127.0.0.2", "169.254.1.1", "fe80::1", "0.0.0.0"):
        with pytest.raises(UnsafeUrl, match=f"resolves to {re.escape(private)}"):
            check_url(url, allow_private=False, resolve=resolver(private))
        assert check_url(url, allow_private=True, resolve=resolver(private)) == [private]

    # beyond the private ranges: shared address space (cloud metadata at 100.100.100.200),
    # documentation, private IPv4 inside IPv6 (mapped, 6to4, Teredo), unique local
    for hidden in ("100.100.100.200", "100.64.0.1", "192.0.2.1", "::ffff:10.0.0.1",
                   "2002:a00:1::1", "2001:0:4136:e378:8000:63bf:f5ff:fffe", "fc00::1"):  # fmt: skip
        with pytest.raises(UnsafeUrl, match=f"resolves to {re.escape(hidden)}"):
            check_url(url, allow_private=False, resolve=resolver(hidden))
    for public in ("::ffff:93.184.216.34", "2002:5db8:d822::1", "2606:4700::1111"):
        assert check_url(url, allow_private=False, resolve=resolver(public)) == [public]

    def nowhere(host: str, port: int, **_: Any) -> list[Any]:
        raise socket.gaierror("Name or service not known")

    with pytest.raises(UnsafeUrl, match=r"'hooks\.example\.org' does not resolve"):
        check_url(url, allow_private=True, resolve=nowhere)


def test_a_host_that_cannot_be_looked_up_is_refused_naming_url(client: TestClient) -> None:
    for url in ("http://a\x00b.example/", "http://" + "x" * 64 + ".example/", "http://[::1/"):
        r = client.post("/v1/webhooks", json={"url": url})
        assert (r.status_code, r.json()["error"]["field"]) == (422, "url"), (url, r.text)
    r = client.get("/v1/webhooks/x/deliveries", params={"cursor": "9" * 19})
    assert (r.status_code, r.json()["error"]["field"]) == (422, "cursor")


def test_the_signature_is_hmac_sha256_of_time_dot_body() -> None:
    body = b'{"id":"job.failed:x"}'
    expected = hmac.new(b"whsec_k", b"1700000000." + body, hashlib.sha256).hexdigest()
    assert signature("whsec_k", 1700000000, body) == expected
    assert signature("whsec_other", 1700000000, body) != expected


def test_the_backoff_doubles_up_to_its_cap_with_jitter() -> None:
    low, high = (lambda: 0.0), (lambda: 0.999999)
    assert [backoff(a, base=1, cap=10, rand=low) for a in (1, 2, 3, 4, 5, 60)] == [
        0.5, 1.0, 2.0, 4.0, 5.0, 5.0]  # fmt: skip
    assert backoff(3, base=1, cap=10, rand=high) == pytest.approx(4.0, rel=1e-5)


def test_an_event_carries_a_failed_jobs_error_without_its_traceback(tmp_path: Path) -> None:
    """The traceback stays with the operators, as in every API answer (``present``)."""
    import json
    from datetime import UTC, datetime

    from api.webhooks import event_body
    from core.spec import parse_spec
    from db.migrate import upgrade
    from db.store import JobStore
    from db.sweeps import SweepStore
    from db.webhooks import DueDelivery

    url = f"sqlite:///{tmp_path}/gradq.db"
    upgrade(url)
    engine = make_engine(url)
    jobs = JobStore(engine)
    job = jobs.submit(spec=parse_spec({"dataset": "iris"}), tenant="a")
    [claimed] = jobs.claim(owner="w", lease_seconds=30, ids=[job.id])
    error = {"type": "invalid", "message": "bad rows", "traceback": "Traceback: /srv/x.py"}
    jobs.finish(job_id=job.id, attempt=claimed.attempt, status="failed", error=error)
    due = DueDelivery(
        id=1, tenant="a", event_id=f"job.failed:{job.id}", event="job.failed",
        subject_id=job.id, occurred_at=datetime.now(UTC), attempt=1, url="https://x", secret="s",
    )  # fmt: skip
    body = json.loads(event_body(due, jobs, SweepStore(engine)))
    assert body["data"]["job"]["error"] == {"type": "invalid", "message": "bad rows"}
    engine.dispose()
