"""The FastAPI application: ``create_app(settings)`` builds it; nothing is built at import.

The lifespan makes the database engine, the stores over it and the MLflow adapter from settings
and disposes of them at shutdown; it runs the webhook deliverer (``api/webhooks.py``) as long
as the app. Routes live in ``api/routes/`` (one file per resource),
errors are mapped in ``api/errors.py``; the middleware of ``api/middleware.py`` limits every
request's body and counts every answer (``/metrics``), that of ``api/browser.py`` refuses
what a web page in a user's browser could send from another site. Every request, ``POST /v1/jobs``
included, enters through FastAPI and passes the same middleware, so a middleware added to
the app applies to all of them.
"""

from __future__ import annotations

import gc
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from typing import Any

from fastapi import FastAPI
from fastapi.openapi.utils import get_openapi

from api import errors
from api.access import Access
from api.browser import BrowserGuard
from api.deps import Services
from api.group_commit import GroupCommit
from api.middleware import BodyLimit, CountResponses, ResponseCounts
from api.predictions import PredictorCache, is_predict_path
from api.routes import (
    artifacts,
    datasets,
    gradcheck,
    health,
    job_activity,
    jobs,
    predict,
    submit,
    sweeps,
    web,
    webhooks,
)
from api.settings import Settings
from api.webhooks import Deliverer
from core.spec import JobSpec
from db.datasets import DatasetStore
from db.keys import KeyStore
from db.session import make_engine
from db.store import JobStore
from db.sweeps import SweepStore
from db.webhooks import WebhookStore
from workers.tracking.read import Tracking

UPLOAD_OVERHEAD = 64 * 1024  # multipart boundaries and form fields around the file


def default_ray_probe(settings: Settings) -> Callable[[], str]:
    """Without a dispatcher in this process: a TCP connect to the Ray head's address, or,
    for a local Ray, a note that the dispatcher process owns it."""

    def probe() -> str:
        if settings.ray_address is None:
            return "local Ray: started by the dispatcher process (`gradq dispatcher`)"
        from workers.probes import ray_head_reachable

        return ray_head_reachable(settings.ray_address)

    return probe


# Net new objects (tracked by the collector) between two young collections; Python's
# default is 700. See ``collect_young_less_often``.
YOUNG_COLLECTION_THRESHOLD = 10_000


def collect_young_less_often() -> tuple[int, int, int]:
    """Raise the collector's young-generation threshold to ``YOUNG_COLLECTION_THRESHOLD``;
    returns the thresholds it replaced.

    A young collection walks every object that is alive and young: above all those of the
    requests in flight, each a chain of coroutine frames through the app's middleware and
    routing, waiting for its group commit. Under load they alone exceed Python's default
    threshold again and again, so the young generation was collected every few dozen
    submits, walking the same frames each time, though nearly everything a request makes
    is freed by reference counting when it ends. Past the higher threshold, collections
    still come whenever that many objects are kept beyond their request (cyclic garbage).
    """
    before = gc.get_threshold()
    gc.set_threshold(YOUNG_COLLECTION_THRESHOLD, *before[1:])
    return before


def freeze_startup_objects() -> None:
    """Move everything alive after startup into the collector's permanent generation.

    A server process holds hundreds of thousands of objects from its imports (FastAPI,
    pydantic, SQLAlchemy, MLflow, torch) that live as long as it does. Python's full
    (generation 2) collections walk all of them while every request in flight waits: these
    pauses make the tail of the submit latency (bench/RESULTS.md, API). Frozen, they are
    never walked again; full collections then only see what requests left behind. The
    garbage of startup is collected once first, so that none of it is kept for good.
    """
    gc.collect()
    gc.freeze()


def create_app(settings: Settings, *, ray_probe: Callable[[], str] | None = None) -> FastAPI:
    """The app for ``settings``. ``ray_probe`` raises when Ray is unreachable (``/readyz``);
    ``gradq serve`` passes one that looks at its in-process Ray and dispatcher."""

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        engine = make_engine(settings.database_url)
        store = JobStore(engine)
        submits = GroupCommit(store, max_queued=settings.max_queued_per_tenant)
        keys = KeyStore(engine)
        app.state.services = Services(
            settings=settings,
            store=store,
            keys=keys,
            access=Access(settings, keys),
            datasets=DatasetStore(engine),
            submits=submits,
            tracking=Tracking(
                tracking_uri=settings.mlflow_tracking_uri,
                artifact_root=settings.artifact_root,
                ui_url=settings.mlflow_ui_url,
            ),
            ray_probe=ray_probe or default_ray_probe(settings),
            sweeps=SweepStore(engine),
            webhooks=WebhookStore(engine),
            predictors=PredictorCache(settings.predict_cache_models),
        )
        services = app.state.services
        deliverer = None
        if settings.webhooks_deliver:
            deliverer = Deliverer(settings, services.webhooks, store, services.sweeps)
            deliverer.start()
        freeze_startup_objects()
        thresholds = collect_young_less_often()
        try:
            yield
        finally:
            if deliverer is not None:
                deliverer.stop()
            submits.close()
            store.dispose()
            gc.set_threshold(*thresholds)
            gc.unfreeze()  # a process that starts another app (tests) collects this one's

    def limit_for(path: str) -> int:
        if path.rstrip("/") == "/v1/datasets":
            return settings.max_upload_bytes + UPLOAD_OVERHEAD
        if is_predict_path(path):
            return settings.predict_max_bytes
        return settings.max_body_bytes

    app = FastAPI(
        # gradq configures no OpenTelemetry provider: FastAPI's native telemetry would only
        # look for one on every request. (An instrumentation that wraps the app still can.)
        telemetry={"tracing": False, "metrics": False, "logs": False},
        title="gradq",
        version="1",
        summary="Train MLPs as jobs: a durable queue, Ray workers, MLflow tracking.",
        lifespan=lifespan,
    )
    errors.install(app)
    # innermost: a body over the limit is refused (413) before its type is looked at
    app.add_middleware(BrowserGuard, settings=settings)
    app.add_middleware(BodyLimit, limit_for=limit_for)
    # added last, so outermost of the app's middleware: it counts the body limit's 413 too
    app.state.responses = ResponseCounts()
    app.add_middleware(CountResponses, counts=app.state.responses)
    submit.add_route(app.router)  # POST /v1/jobs, called most: matched before the routers
    for module in (
        jobs,
        submit,
        job_activity,
        artifacts,
        predict,
        datasets,
        gradcheck,
        health,
        sweeps,
        webhooks,
    ):
        app.include_router(module.router)
    app.include_router(web.make_router())  # the web page at / (api/web/)
    app.openapi = _openapi_with_spec(app)  # type: ignore[method-assign]
    return app


def app_from_environment() -> FastAPI:
    """The app for the settings in the environment: what each worker process of
    ``gradq api --workers N`` serves (uvicorn imports it by name in every process)."""
    return create_app(Settings())


def _openapi_with_spec(app: FastAPI) -> Callable[[], dict[str, Any]]:
    """FastAPI's schema plus ``JobSpec`` (and its sections) under components: the job routes
    parse their body with core's ``parse_spec`` and reference it by hand."""

    def openapi() -> dict[str, Any]:
        if app.openapi_schema:
            return app.openapi_schema
        schema = get_openapi(
            title=app.title, version=app.version, summary=app.summary, routes=app.routes
        )
        spec = JobSpec.model_json_schema(ref_template="#/components/schemas/{model}")
        components = schema.setdefault("components", {}).setdefault("schemas", {})
        added = {**spec.pop("$defs", {}), "JobSpec": spec}
        clash = set(added) & set(components)
        if clash:
            raise RuntimeError(f"schema names used twice: {sorted(clash)}")
        components.update(added)
        app.openapi_schema = schema
        return schema

    return openapi
