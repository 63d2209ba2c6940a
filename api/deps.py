"""What routes depend on, as ``Annotated`` aliases: ``StoreDep``, ``DatasetsDep``,
``WebhooksDep``,
``SettingsDep``, ``TrackingDep``, ``ServicesDep``, ``TenantDep`` (the caller's tenant, from
its API key) and ``OperatorDep`` (the caller's key is an operator's)."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Annotated

import anyio
from fastapi import Depends, Request
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer

from api.access import Access
from api.errors import ApiError
from api.group_commit import GroupCommit
from api.predictions import PredictorCache
from api.settings import Settings
from db.datasets import DatasetStore
from db.keys import KeyStore
from db.store import JobStore
from db.sweeps import SweepStore
from db.views import KeyGrant
from db.webhooks import WebhookStore
from workers.tracking.read import Tracking


@dataclass
class Services:
    """Everything the app built at start (in its lifespan), held on ``app.state.services``."""

    settings: Settings
    store: JobStore
    keys: KeyStore  # over the store's engine
    access: Access  # keys to tenants and roles, tenants to caps, cached (over ``keys``)
    datasets: DatasetStore  # over the store's engine
    submits: GroupCommit  # POST /v1/jobs: concurrent submits committed together
    tracking: Tracking
    ray_probe: Callable[[], str]
    sweeps: SweepStore  # over the store's engine
    webhooks: WebhookStore  # over the store's engine
    # POST /v1/gradcheck: the one check running, and how many wait for it
    gradcheck_slot: anyio.CapacityLimiter = field(default_factory=lambda: anyio.CapacityLimiter(1))
    gradcheck_waiting: int = 0
    streams: StreamCount = field(default_factory=lambda: StreamCount())
    # POST /v1/jobs/{id}/predict: loaded weights by (job, best|last)
    predictors: PredictorCache = field(default_factory=lambda: PredictorCache(32))


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


async def get_sweeps(services: ServicesDep) -> SweepStore:
    return services.sweeps


async def get_webhooks(services: ServicesDep) -> WebhookStore:
    return services.webhooks


StoreDep = Annotated[JobStore, Depends(get_store)]
WebhooksDep = Annotated[WebhookStore, Depends(get_webhooks)]
SweepsDep = Annotated[SweepStore, Depends(get_sweeps)]
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
    return (await services.access.grant(key)).tenant


async def get_operator(
    request: Request,
    credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(bearer)],
) -> KeyGrant:
    """The caller's key when it is an operator's (always so without keys): 401 as
    ``get_tenant``, 403 for a tenant's key."""
    services: Services = request.app.state.services
    grant = await services.access.grant(credentials.credentials if credentials else None)
    if grant.role != "operator":
        raise ApiError(403, "forbidden", "only an operator's API key may read this")
    return grant


TenantDep = Annotated[str, Depends(get_tenant)]
OperatorDep = Annotated[KeyGrant, Depends(get_operator)]
