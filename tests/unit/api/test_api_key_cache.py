"""API keys are checked through a small cache (issue 16, finding 11: every request cost a
database lookup): a valid key is remembered for ``key_cache_seconds``, so its revocation
counts within that time; an unknown key is remembered for at most ``NEGATIVE_SECONDS``, so a
key made just after counts within that. The clock is injected; the keys are the real store
on the test's SQLite file."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient

from api.access import NEGATIVE_SECONDS, Access
from api.errors import ApiError
from api.settings import Settings
from db.keys import KeyStore
from db.session import make_engine
from db.views import KeyGrant, TenantCaps


class Counted(KeyStore):
    """The real key store, counting its database reads."""

    def __init__(self, *args: Any) -> None:
        super().__init__(*args)
        self.reads = 0

    def lookup(self, *, key: str) -> KeyGrant | None:
        self.reads += 1
        return super().lookup(key=key)

    def tenant_caps(self, **kwargs: Any) -> dict[str, TenantCaps]:
        self.reads += 1
        return super().tenant_caps(**kwargs)


@pytest.fixture
def setup(
    make_settings: Callable[..., Settings], tmp_path: Path
) -> tuple[Access, Counted, list[float]]:
    keys = Counted(make_engine(f"sqlite:///{tmp_path}/gradq.db"))
    clock = [1000.0]
    access = Access(make_settings(auth="keys", key_cache_seconds=5), keys, clock=lambda: clock[0])
    return access, keys, clock


def grant(access: Access, key: str) -> KeyGrant | str:
    try:
        return asyncio.run(access.grant(key))
    except ApiError as exc:
        return f"{exc.status} {exc.message}"


def test_requests_with_one_key_read_it_once(
    make_client: Callable[..., TestClient], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    keys = KeyStore(make_engine(f"sqlite:///{tmp_path}/gradq.db"))
    _, key = keys.create(tenant="a")
    reads: list[str] = []
    real = KeyStore.lookup  # every read of a key goes through it (authenticate too)
    monkeypatch.setattr(KeyStore, "lookup", lambda self, *, key: (reads.append(key), real(self, key=key))[1])  # fmt: skip
    client = make_client(auth="keys")
    for _ in range(5):
        assert client.get("/v1/jobs", headers={"Authorization": f"Bearer {key}"}).status_code == 200
    assert len(reads) == 1, reads


def test_a_revoked_key_is_refused_once_the_cache_time_has_passed(
    setup: tuple[Access, Counted, list[float]],
) -> None:
    access, keys, clock = setup
    key_id, key = keys.create(tenant="a")
    assert grant(access, key) == KeyGrant(tenant="a", role="tenant")
    keys.revoke(key_id=key_id)
    clock[0] += 4.9
    assert grant(access, key) == KeyGrant(tenant="a", role="tenant")  # remembered
    assert keys.reads == 1
    clock[0] += 0.1  # 5 s after it was read
    assert grant(access, key) == "401 unknown or revoked API key"
    assert keys.reads == 2


def test_an_unknown_key_is_remembered_briefly(setup: tuple[Access, Counted, list[float]]) -> None:
    access, keys, clock = setup
    made_up = "gq_" + "m" * 40
    assert grant(access, made_up) == "401 unknown or revoked API key"
    assert grant(access, made_up) == "401 unknown or revoked API key"
    assert keys.reads == 1  # a flood of one bad key reads it once a second
    keys.ensure(tenant="b", key=made_up)  # the key is made now
    clock[0] += NEGATIVE_SECONDS
    assert grant(access, made_up) == KeyGrant(tenant="b", role="tenant")


def test_a_tenants_caps_are_remembered_like_its_keys(
    setup: tuple[Access, Counted, list[float]],
) -> None:
    access, keys, clock = setup
    keys.create(tenant="a", max_priority=3)
    assert asyncio.run(access.caps("a")) == TenantCaps(max_running=None, max_priority=3)
    keys.create(tenant="a", max_priority=1)
    assert asyncio.run(access.caps("a")).max_priority == 3
    clock[0] += 5
    assert asyncio.run(access.caps("a")).max_priority == 1


def test_no_cache_reads_every_time(make_settings: Callable[..., Settings], tmp_path: Path) -> None:
    keys = Counted(make_engine(f"sqlite:///{tmp_path}/gradq.db"))
    access = Access(make_settings(auth="keys", key_cache_seconds=0), keys, clock=lambda: 0.0)
    _, key = keys.create(tenant="a")
    for _ in range(3):
        assert grant(access, key) == KeyGrant(tenant="a", role="tenant")
    assert keys.reads == 3
