"""``POST /v1/jobs``: queue a training job, the route a client calls at a high rate.

A FastAPI route like the others, on the app's own router: every request passes the app's
middleware and its error handlers, and the OpenAPI schema documents it. It does not pay
for FastAPI's dependency solving: :class:`SubmitRoute` reads the route's two parameters
itself, as FastAPI would read them. ``api.main`` adds it to the app's router before the
routers of ``api.routes``, so that it is matched without their indirection.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Annotated, Any

from fastapi import APIRouter, Header, Request, Response
from fastapi.dependencies.models import Dependant
from fastapi.exceptions import RequestValidationError
from fastapi.routing import APIRoute
from starlette.concurrency import run_in_threadpool
from starlette.types import ASGIApp, Receive, Scope, Send

from api import present, schemas
from api.deps import Services, TenantDep, bearer_key, get_tenant, resolve_tenant
from api.errors import ApiError
from api.routes.common import AUTHENTICATED, SPEC_BODY, checked_spec, errors, read_spec
from api.routes.jobs import (
    check_init_from,
    check_upload,
    needs_mlflow,
    run_link,
    shows_mlflow,
    waiting_reason,
)
from core.spec import InvalidSpec, merge_patch, parse_spec
from db.errors import QueueFull
from db.states import JobStatus
from db.submits import SubmitRequest

PATH = "/v1/jobs"
router = APIRouter(prefix=PATH, tags=["jobs"], dependencies=AUTHENTICATED)  # rerun
REPLAY = {"model": schemas.Job, "description": "an idempotent replay: the job already made"}
MAX_IDEMPOTENCY_KEY = 200
IdempotencyKey = Annotated[
    str | None,
    Header(
        alias="Idempotency-Key",
        max_length=MAX_IDEMPOTENCY_KEY,
        description="the same key and spec again returns the same job; another spec: 409",
    ),
]


async def submit(
    request: Request, tenant: TenantDep, idempotency_key: IdempotencyKey = None
) -> Response:
    """Queue a training job. The body is a JobSpec; only `dataset` is required."""
    return await submit_job(request, tenant, idempotency_key)


class SubmitRoute(APIRoute):
    """An ``APIRoute`` whose ASGI app, when the route depends on nothing but the caller's
    tenant and the ``Idempotency-Key`` header (as :func:`submit` declares), reads both
    itself (:func:`submit_request`) and lets an error rise to the app's handlers, as a
    route's error does; FastAPI's own handler answers otherwise. A dependency added to the
    route, and any request to an app with ``dependency_overrides``, go through FastAPI's
    handler: nothing declared is ever skipped."""

    def __init__(self, path: str, endpoint: Callable[..., Any], **kwargs: Any) -> None:
        super().__init__(path, endpoint, **kwargs)
        if _tenant_and_key_only(self.dependant):
            self.app = _reading_parameters_itself(self.app)


def _tenant_and_key_only(dependant: Dependant) -> bool:
    """Whether ``dependant`` is :func:`submit` as it is declared here, with no parameter or
    dependency but the tenant and the key (which :func:`submit_request` reads)."""
    others = [*dependant.path_params, *dependant.query_params, *dependant.cookie_params]
    return (
        dependant.call is submit
        and {d.call for d in dependant.dependencies} == {get_tenant}
        and [p.alias for p in dependant.header_params] == ["Idempotency-Key"]
        and not others
        and not dependant.body_params
        and dependant.background_tasks_param_name is None
        and dependant.response_param_name is None
    )


def _reading_parameters_itself(declared: ASGIApp) -> ASGIApp:
    async def app(scope: Scope, receive: Receive, send: Send) -> None:
        if getattr(scope.get("app"), "dependency_overrides", None):
            await declared(scope, receive, send)
            return
        response = await submit_request(Request(scope, receive, send))
        await response(scope, receive, send)

    return app


def add_route(router: APIRouter) -> None:
    """Add ``POST /v1/jobs`` to ``router`` (the app's own: ``api.main``), first among its
    routes: matched before any other (the docs' routes are there from the start)."""
    router.add_api_route(
        PATH,
        submit,
        methods=["POST"],
        status_code=201,
        response_model=schemas.Job,
        tags=["jobs"],
        dependencies=AUTHENTICATED,
        openapi_extra=SPEC_BODY,
        responses={200: REPLAY, **errors(400, 409, 422, 429)},
        route_class_override=SubmitRoute,
    )
    router.routes.insert(0, router.routes.pop())


async def submit_request(request: Request) -> Response:
    """:func:`submit` with its parameters read as FastAPI reads them: the tenant first (its
    401 comes before anything else), then the ``Idempotency-Key`` header."""
    services: Services = request.app.state.services
    headers = request.headers
    tenant = await resolve_tenant(services, bearer_key(headers.get("authorization")))
    key = headers.get("idempotency-key")
    if key is not None and len(key) > MAX_IDEMPOTENCY_KEY:
        raise RequestValidationError(  # as FastAPI's header validation words it
            [
                {
                    "type": "string_too_long",
                    "loc": ("header", "Idempotency-Key"),
                    "msg": f"String should have at most {MAX_IDEMPOTENCY_KEY} characters",
                    "input": key,
                    "ctx": {"max_length": MAX_IDEMPOTENCY_KEY},
                }
            ]
        )
    return await submit_job(request, tenant, key)


async def submit_job(request: Request, tenant: str, idempotency_key: str | None) -> Response:
    """``POST /v1/jobs`` for a known tenant: parse the spec, then :func:`queue_job`."""
    services: Services = request.app.state.services
    spec = await read_spec(request, services.settings)
    wanted = SubmitRequest(spec=spec, tenant=tenant, idempotency_key=idempotency_key)
    return await queue_job(services, wanted)


async def queue_job(services: Services, wanted: SubmitRequest) -> Response:
    """Check what only the service knows of a parsed spec (the tenant's priority cap, its
    upload, its warm start's origin), queue it through the group commit, answer 201 with the
    job (200 for an idempotent replay)."""
    spec, tenant = wanted.spec, wanted.tenant
    await services.access.check_priority(tenant, spec.priority)
    if spec.dataset.name == "upload" and spec.dataset.id is not None:
        limits = services.settings.limits  # the parameter and memory limits need its shape
        await run_in_threadpool(check_upload, spec, services.datasets, tenant, limits)
    if spec.init_from is not None:
        await run_in_threadpool(check_init_from, spec, services.store, tenant)
    try:
        done = await services.submits.submit(wanted)
    except QueueFull as exc:
        raise ApiError(
            429,
            "too_many_queued",
            f"{exc.queued} jobs of yours are queued, the limit is {exc.limit}: "
            "wait for some to start, or cancel some",
            headers={"Retry-After": "10"},
        ) from None
    view, ui_url = done.job, services.settings.mlflow_ui_url
    if not shows_mlflow(services.settings):
        link = None
    elif needs_mlflow(view):  # a replay of a job whose run was stored before migration 0004
        link = await run_in_threadpool(run_link, view, services.tracking, ui_url)
    else:
        link = run_link(view, services.tracking, ui_url)
    reason = None
    if view.status is JobStatus.QUEUED:
        reason = view.pending_reason or waiting_reason(done.position)
    job = present.job(
        view,
        queue_position=done.position,
        pending_reason=reason,
        mlflow_link=link,
        pydantic_json=True,
    )
    # Rendered here, once: the model was validated when it was built (FastAPI would validate
    # a returned model against response_model a second time, then encode it).
    return Response(
        job.model_dump_json(),
        status_code=201 if view.created else 200,
        media_type="application/json",
    )


PATCH_BODY: dict[str, Any] = {
    "requestBody": {
        "required": False,
        "content": {
            "application/merge-patch+json": {"schema": {"type": "object"}},
            "application/json": {"schema": {"type": "object"}},
        },
    }
}


@router.post(
    "/{job_id}/rerun",
    status_code=201,
    response_model=schemas.Job,
    responses=errors(404, 422, 429),
    openapi_extra=PATCH_BODY,
)
async def rerun(job_id: str, request: Request, tenant: TenantDep) -> Response:
    """Queue a new job with this job's spec, changed by the body if there is one: a JSON
    merge patch of the spec (RFC 7396), e.g. ``{"optimizer": {"epochs": 200}}``; a null
    removes a field (back to its default). The patched spec is validated as a submit's.
    The new job's ``origin_job_id`` is this job's id. A sweep's trial reruns as a job of
    its own (without its ``trial`` section)."""
    services: Services = request.app.state.services
    origin = await run_in_threadpool(services.store.get, job_id=job_id, tenant=tenant)
    raw = await request.body()
    try:
        patch = json.loads(raw) if raw.strip() else {}
    except (ValueError, RecursionError) as exc:
        raise ApiError(400, "malformed_json", f"the body is not valid JSON: {exc}") from None
    if not isinstance(patch, dict):
        raise InvalidSpec.at(
            "(root)", f"a merge patch of the spec is an object, got {type(patch).__name__}"
        )
    base = {k: v for k, v in origin.spec.items() if k != "trial"}
    spec = parse_spec(merge_patch(base, patch), limits=services.settings.limits)
    spec = checked_spec(spec, services.settings)
    wanted = SubmitRequest(spec=spec, tenant=tenant, origin_job_id=origin.id)
    return await queue_job(services, wanted)
