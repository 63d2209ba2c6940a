"""What a job did: ``/v1/jobs/{id}/metrics`` (learning curves) and ``/v1/jobs/{id}/events``
(the status history, or a live stream of status and progress with SSE)."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator, Callable
from typing import Annotated, Any

import anyio
from fastapi import APIRouter, Query, Request
from fastapi.responses import StreamingResponse
from starlette.concurrency import run_in_threadpool
from starlette.types import Receive, Scope, Send

from api import present, schemas
from api.deps import Services, StoreDep, TenantDep, TrackingDep
from api.errors import ApiError
from api.routes.common import AUTHENTICATED, errors
from api.routes.jobs import detailed
from db.states import TERMINAL
from db.store import JobStore
from db.views import JobView

router = APIRouter(prefix="/v1/jobs", tags=["jobs"], dependencies=AUTHENTICATED)

SSE_POLL_SECONDS = 0.5
SSE_KEEPALIVE_SECONDS = 15.0


@router.get("/{job_id}/metrics", response_model=schemas.Metrics, responses=errors(404, 422))
def metrics(
    job_id: str,
    store: StoreDep,
    tracking: TrackingDep,
    tenant: TenantDep,
    key: Annotated[
        list[str] | None,
        Query(
            max_length=100,
            description="only these metrics (repeatable): a key such as `loss/val`, or its "
            "former name (`val_loss`), answered under the name asked",
        ),
    ] = None,
) -> schemas.Metrics:
    """The learning curves from the job's MLflow run, per metric a list of {step, value};
    empty while the run is not known yet. Metrics are named as in MLflow (`loss/train`,
    `accuracy/val`, `timing/epoch_seconds`, `final_test_accuracy`, …), also for a run logged
    under their former flat names (`train_loss`, …), which `key` accepts too."""
    view = store.get(job_id=job_id, tenant=tenant)
    curves: dict[str, list[schemas.Point]] = {}
    if view.mlflow_run_id:
        for name, points in tracking.curves(view.mlflow_run_id, key).items():
            curves[name] = [
                schemas.Point(step=s, value=present.finite(float(v))) for s, v in points
            ]
    return schemas.Metrics(job_id=view.id, mlflow_run_id=view.mlflow_run_id, metrics=curves)


@router.get(
    "/{job_id}/events",
    response_model=list[schemas.Event],
    responses={
        200: {
            "description": "the status history; with `Accept: text/event-stream`, a live "
            "stream of `status` and `progress` events that ends with `end`",
            "content": {"text/event-stream": {"schema": {"type": "string"}}},
        },
        **errors(404),
        429: {
            "model": schemas.ErrorBody,
            "description": "as many event streams of this tenant are open as it may hold",
        },
    },
)
async def events(job_id: str, request: Request, store: StoreDep, tenant: TenantDep) -> Any:
    """The job's status changes in order (time, from, to, attempt, reason)."""
    history = await run_in_threadpool(store.events, job_id=job_id, tenant=tenant)
    if "text/event-stream" not in request.headers.get("accept", ""):
        return [present.event(e) for e in history]
    services: Services = request.app.state.services
    limit = services.settings.max_streams_per_tenant
    if not services.streams.take(tenant, limit):
        raise ApiError(
            429,
            "too_many_streams",
            f"you have {limit} event stream{'' if limit == 1 else 's'} open, the most at "
            "once (GRADQ_MAX_STREAMS_PER_TENANT): close one, or poll GET /v1/jobs/{id}",
            headers={"Retry-After": "5"},
        )

    def final(view: JobView) -> schemas.Job:  # as GET /v1/jobs/{id} answers it
        return detailed(view, store, services.tracking, services.settings)

    return CountedStream(
        _stream(store, job_id, tenant, request, final),
        release=lambda: services.streams.give(tenant),
        media_type="text/event-stream",
        headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"},
    )


class CountedStream(StreamingResponse):
    """A stream that calls ``release`` once it is over: ended, failed, or its client gone
    (the server then cancels it)."""

    def __init__(self, *args: Any, release: Callable[[], None], **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.release = release

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        try:
            await super().__call__(scope, receive, send)
        finally:
            self.release()


def _sse(kind: str, data: Any) -> bytes:
    return f"event: {kind}\ndata: {json.dumps(data, default=str)}\n\n".encode()


async def _stream(
    store: JobStore,
    job_id: str,
    tenant: str,
    request: Request,
    final: Callable[[JobView], schemas.Job],
) -> AsyncIterator[bytes]:
    """Polls the store: each new progress as ``progress``, then each new event as
    ``status`` (so a job's last progress comes before its terminal status), then ``end``
    with the final job once it is terminal, as ``GET /v1/jobs/{id}`` answers it (``final``:
    its links included), or when the client leaves."""
    seen = 0
    last_progress: Any = None
    quiet = 0.0
    while not await request.is_disconnected():
        # the job first, then its events: a terminal job's final event is then in the list
        view = await run_in_threadpool(store.get, job_id=job_id, tenant=tenant)
        history = await run_in_threadpool(store.events, job_id=job_id, tenant=tenant)
        sent = False
        if view.progress is not None and view.progress != last_progress:
            last_progress = view.progress
            sent = True
            yield _sse("progress", present.finite(view.progress))
        for e in history:
            if e.id > seen:
                seen = e.id
                sent = True
                yield _sse("status", present.event(e).model_dump(mode="json"))
        if view.status in TERMINAL:
            ended = await run_in_threadpool(final, view)
            yield _sse("end", ended.model_dump(mode="json"))
            return
        quiet = 0.0 if sent else quiet + SSE_POLL_SECONDS
        if quiet >= SSE_KEEPALIVE_SECONDS:
            quiet = 0.0
            yield b": keep-alive\n\n"
        await anyio.sleep(SSE_POLL_SECONDS)
