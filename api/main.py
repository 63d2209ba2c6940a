"""The FastAPI application: ``create_app(settings)`` builds it; nothing is built at import.

The lifespan makes the database engine, the stores over it and the MLflow adapter from settings
and disposes of them at shutdown. Routes live in ``api/routes/`` (one file per resource),
errors are mapped in ``api/errors.py``, bodies are limited by ``api/middleware.py``.
"""

from __future__ import annotations

import gc
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from typing import Any

from fastapi import FastAPI
from fastapi.openapi.utils import get_openapi

from api import errors
from api.deps import Services
from api.fast_submit import GradqApp
from api.group_commit import GroupCommit
from api.middleware import BodyLimit
from api.routes import datasets, gradcheck, health, job_activity, jobs
from api.settings import Settings
from core.spec import JobSpec
from db.datasets import DatasetStore
from db.keys import KeyStore
from db.session import make_engine
from db.store import JobStore
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
        app.state.services = Services(
            settings=settings,
            store=store,
            keys=KeyStore(engine),
            datasets=DatasetStore(engine),
            submits=submits,
            tracking=Tracking(
                tracking_uri=settings.mlflow_tracking_uri,
                artifact_root=settings.artifact_root,
                ui_url=settings.mlflow_ui_url,
            ),
            ray_probe=ray_probe or default_ray_probe(settings),
        )
        freeze_startup_objects()
        try:
            yield
        finally:
            submits.close()
            store.dispose()
            gc.unfreeze()  # a process that starts another app (tests) collects this one's

    def limit_for(path: str) -> int:
        if path.rstrip("/") == "/v1/datasets":
            return settings.max_upload_bytes + UPLOAD_OVERHEAD
        return settings.max_body_bytes

    app = GradqApp(
        limit_for=limit_for,
        title="gradq",
        version="1",
        summary="Train MLPs as jobs: a durable queue, Ray workers, MLflow tracking.",
        lifespan=lifespan,
    )
    errors.install(app)
    app.add_middleware(BodyLimit, limit_for=limit_for)
    for module in (jobs, job_activity, datasets, gradcheck, health):
        app.include_router(module.router)
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
