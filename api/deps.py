"""What routes depend on, as ``Annotated`` aliases: ``StoreDep``, ``DatasetsDep``,
``SettingsDep``, ``TrackingDep``, ``ServicesDep`` and ``TenantDep`` (the caller's tenant, from
its API key)."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Annotated

import anyio
from fastapi import Depends, Request
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from starlette.concurrency import run_in_threadpool

from api.errors import ApiError
from api.group_commit import GroupCommit
from api.settings import Settings
from db.datasets import DatasetStore
from db.keys import KeyStore
from db.store import JobStore
from workers.tracking.read import Tracking

DEFAULT_TENANT = "default"


@dataclass
class Services:
    """Everything the app built at start (in its lifespan), held on ``app.state.services``."""

    settings: Settings
    store: JobStore
    keys: KeyStore  # over the store's engine
    datasets: DatasetStore  # over the store's engine
    submits: GroupCommit  # POST /v1/jobs: concurrent submits committed together
    tracking: Tracking
    ray_probe: Callable[[], str]
    gradcheck_slots: anyio.CapacityLimiter = field(default_factory=lambda: anyio.CapacityLimiter(2))
    streams: StreamCount = field(default_factory=lambda: StreamCount())


class StreamCount:
    """Live event streams open per tenant (``GRADQ_MAX_STREAMS_PER_TENANT``), counted on
    the event loop: :meth:`take` a place before a stream starts, :meth:`give` it back when
    it ends, however it ends."""

    def __init__(self) -> None:
        self.open: dict[str, int] = {}

    def take(self, tenant: str, limit: int) -> bool:
        if self.open.get(tenant, 0) >= limit:
            return False
        self.open[tenant] = self.open.get(tenant, 0) + 1
        return True

    def give(self, tenant: str) -> None:
        left = self.open.get(tenant, 0) - 1
        if left > 0:
            self.open[tenant] = left
        else:
            self.open.pop(tenant, None)


async def get_services(request: Request) -> Services:
    services: Services = request.app.state.services
    return services


ServicesDep = Annotated[Services, Depends(get_services)]


async def get_store(services: ServicesDep) -> JobStore:
    return services.store


async def get_datasets(services: ServicesDep) -> DatasetStore:
    return services.datasets


async def get_settings(services: ServicesDep) -> Settings:
    return services.settings


async def get_tracking(services: ServicesDep) -> Tracking:
    return services.tracking


StoreDep = Annotated[JobStore, Depends(get_store)]
DatasetsDep = Annotated[DatasetStore, Depends(get_datasets)]
SettingsDep = Annotated[Settings, Depends(get_settings)]
TrackingDep = Annotated[Tracking, Depends(get_tracking)]

bearer = HTTPBearer(
    auto_error=False,
    description="An API key from `gradq keys create` (required when GRADQ_AUTH=keys).",
)


async def get_tenant(
    request: Request,
    credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(bearer)],
) -> str:
    """The caller's tenant: "default" without auth; with keys, the tenant of the bearer key
    (401 when it is missing, unknown or revoked). Async: no thread hop without keys; and no
    sub-dependency but the bearer scheme (each costs FastAPI work on every request)."""
    services: Services = request.app.state.services
    return await resolve_tenant(services, credentials.credentials if credentials else None)


def bearer_key(authorization: str | None) -> str | None:
    """The key of an ``Authorization: Bearer KEY`` header, as FastAPI's ``HTTPBearer`` reads
    it (scheme case-insensitive, split at the first space); None for no header, another
    scheme or an empty key."""
    if not authorization:
        return None
    scheme, _, key = authorization.partition(" ")
    key = key.strip()
    if scheme.lower() != "bearer" or not key:
        return None
    return key


async def resolve_tenant(services: Services, key: str | None) -> str:
    """The tenant of ``key`` (see ``get_tenant``); raises a 401 ``ApiError``."""
    if services.settings.auth == "none":
        return DEFAULT_TENANT
    challenge = {"WWW-Authenticate": "Bearer"}
    if not key:
        raise ApiError(
            401,
            "unauthorized",
            "an API key is required: send 'Authorization: Bearer <key>'",
            field="Authorization",
            headers=challenge,
        )
    tenant = await run_in_threadpool(services.keys.authenticate, key=key)
    if tenant is None:
        raise ApiError(
            401,
            "unauthorized",
            "unknown or revoked API key",
            field="Authorization",
            headers=challenge,
        )
    return tenant


TenantDep = Annotated[str, Depends(get_tenant)]
