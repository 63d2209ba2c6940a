"""Who a request acts for, and what its tenant may do: API keys checked through a small cache,
the operator role, and tenants' caps.

Every request with ``GRADQ_AUTH=keys`` needs its key's tenant. A key found valid is
remembered for ``GRADQ_KEY_CACHE_SECONDS`` (default 5), so a revoked key is refused at most
that long after its revocation; an unknown key is remembered for at most
``NEGATIVE_SECONDS``, so a key made just after a request that tried it works within that
time. A tenant's caps (``db.keys.KeyStore.tenant_caps``) are remembered as long as a valid
key. Without keys nothing is read from the database: every request is the "default" tenant,
an operator, with the settings' caps.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Hashable
from typing import Generic, TypeVar

from starlette.concurrency import run_in_threadpool

from api.errors import ApiError
from api.settings import Settings
from db.keys import KeyStore, hash_key
from db.views import KeyGrant, TenantCaps

DEFAULT_TENANT = "default"
NEGATIVE_SECONDS = 1.0  # the most an unknown key is remembered as unknown
MAX_ENTRIES = 10_000  # per cache: the oldest entry goes first beyond it
NO_KEYS = KeyGrant(tenant=DEFAULT_TENANT, role="operator")  # every request without keys

K = TypeVar("K", bound=Hashable)
V = TypeVar("V")


class TtlCache(Generic[K, V]):
    """Values that expire ``ttl`` seconds after they were put, on ``clock``; at most
    ``MAX_ENTRIES``, the oldest dropped first. For the event loop's thread only."""

    def __init__(self, clock: Callable[[], float]) -> None:
        self._clock = clock
        self._entries: dict[K, tuple[float, V]] = {}

    def get(self, key: K) -> tuple[bool, V | None]:
        """(found, value): found is False for an absent or expired entry."""
        entry = self._entries.get(key)
        if entry is None:
            return False, None
        if self._clock() >= entry[0]:
            del self._entries[key]
            return False, None
        return True, entry[1]

    def put(self, key: K, value: V, ttl: float) -> None:
        if ttl <= 0:
            return
        self._entries.pop(key, None)
        while len(self._entries) >= MAX_ENTRIES:
            del self._entries[next(iter(self._entries))]
        self._entries[key] = (self._clock() + ttl, value)


class Access:
    """Keys to tenants and roles, and tenants to caps, for one app; ``clock`` times the
    caches (tests set it)."""

    def __init__(
        self, settings: Settings, keys: KeyStore, clock: Callable[[], float] = time.monotonic
    ) -> None:
        self.settings, self.keys = settings, keys
        self.default_caps = TenantCaps(
            max_running=settings.tenant_max_running, max_priority=settings.tenant_max_priority
        )
        self._grants: TtlCache[str, KeyGrant | None] = TtlCache(clock)
        self._caps: TtlCache[str, TenantCaps] = TtlCache(clock)

    async def grant(self, key: str | None) -> KeyGrant:
        """The tenant and role of ``key``; "default", an operator, without keys. A missing,
        unknown or revoked key is a 401 ``ApiError``."""
        if self.settings.auth == "none":
            return NO_KEYS
        challenge = {"WWW-Authenticate": "Bearer"}
        if not key:
            raise ApiError(
                401,
                "unauthorized",
                "an API key is required: send 'Authorization: Bearer <key>'",
                field="Authorization",
                headers=challenge,
            )
        hashed = hash_key(key)
        found, grant = self._grants.get(hashed)
        if not found:
            grant = await run_in_threadpool(self.keys.lookup, key=key)
            ttl = self.settings.key_cache_seconds
            self._grants.put(
                hashed, grant, ttl if grant is not None else min(ttl, NEGATIVE_SECONDS)
            )
        if grant is None:
            raise ApiError(
                401,
                "unauthorized",
                "unknown or revoked API key",
                field="Authorization",
                headers=challenge,
            )
        return grant

    async def caps(self, tenant: str) -> TenantCaps:
        """The tenant's caps: the settings' without keys, else its keys' (see
        ``KeyStore.tenant_caps``), remembered as long as a valid key."""
        if self.settings.auth == "none":
            return self.default_caps
        found, caps = self._caps.get(tenant)
        if found and caps is not None:
            return caps
        by_tenant = await run_in_threadpool(
            self.keys.tenant_caps, tenants=[tenant], default=self.default_caps
        )
        self._caps.put(tenant, by_tenant[tenant], self.settings.key_cache_seconds)
        return by_tenant[tenant]

    async def check_priority(self, tenant: str, priority: int) -> None:
        """A 422 naming ``priority`` when it is above the tenant's cap."""
        cap = (await self.caps(tenant)).max_priority
        if cap is not None and priority > cap:
            raise ApiError(
                422,
                "invalid_spec",
                f"at most {cap} for tenant {tenant} (its cap), not {priority}",
                field="priority",
            )
