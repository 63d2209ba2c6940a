"""``/v1/gradcheck``: the validator's per-layer report for a spec, synchronously.

The spec's model is built freshly initialised on a small batch of its data and the manual
backprop is compared with autograd and central differences in float64. The check runs in the
API process, in a worker thread, so a request is bounded: at most ``gradcheck_max_parameters``
parameters (422 at ``model.hidden``), at most ``gradcheck_max_rows`` generated rows for a
synthetic set, at most ``MAX_FD_SAMPLES`` finite-difference coordinates per tensor, at most
``gradcheck_max_memory`` of estimated memory (``core.memory.gradcheck_estimate``, 422 naming
the field), one check at a time with at most ``gradcheck_queue`` waiting (429 beyond), and a
check whose client disconnects is stopped between two chunks of its finite differences
(answered 499, which the client that left does not read).
"""

from __future__ import annotations

import tempfile
import threading
from collections.abc import Callable
from typing import Annotated, Any

import anyio
import anyio.to_thread
from fastapi import APIRouter, Query, Request, Response
from starlette.concurrency import run_in_threadpool

from api import present, schemas
from api.deps import Services, ServicesDep, TenantDep
from api.errors import ApiError
from api.routes.common import AUTHENTICATED, SPEC_BODY, SpecDep, errors
from api.routes.jobs import check_upload
from core import defaults
from core.memory import gradcheck_estimate
from core.spec import DatasetShape, InvalidSpec, JobSpec, count_parameters, estimated_parameters

router = APIRouter(prefix="/v1", tags=["gradcheck"], dependencies=AUTHENTICATED)

MAX_FD_SAMPLES = defaults.GRADCHECK_FD_SAMPLES
RETRY_AFTER_S = 5  # what a 429 asks the client to wait
CLIENT_GONE = 499  # the status of a check stopped because its client disconnected


def _too_big(n: int, limit: int) -> InvalidSpec:
    return InvalidSpec.at(
        "model.hidden",
        f"{n:,} parameters exceed the gradient check's limit of {limit:,}; check a smaller "
        "model (the backprop is the same at every width)",
    )


def _check(
    spec: JobSpec, batch: int, services: Services, tenant: str, stop: Callable[[], bool]
) -> dict[str, Any]:
    from core.data import load_dataset
    from core.gradcheck import check_spec
    from core.losses import output_width

    settings = services.settings
    ds = spec.dataset
    with tempfile.TemporaryDirectory(prefix="gradq-gradcheck-") as tmp:
        path = None
        if ds.name == "upload" and ds.id is not None:
            record = services.datasets.get(dataset_id=ds.id, tenant=tenant)
            path = services.tracking.download(record.uri, tmp)
        data = load_dataset(ds, seed=spec.seed, path=path)
    try:
        width = output_width(spec.resolved_loss(data.task), data.task, data.n_classes)
    except ValueError as exc:
        raise InvalidSpec.at("loss", str(exc)) from None
    n = count_parameters([data.n_features, *spec.model.hidden, width])
    if n > settings.gradcheck_max_parameters:
        raise _too_big(n, settings.gradcheck_max_parameters)
    fd = min(spec.gradcheck.fd_samples, MAX_FD_SAMPLES)
    report = check_spec(spec, batch_size=batch, fd_samples=fd, data=data, stop=stop)
    return {**present.finite(report.to_dict()), "parameters": n}


def _admit(spec: JobSpec, batch: int, shape: DatasetShape | None, services: Services) -> None:
    """Refuse a check over the parameter or the memory limit, before it waits for its turn."""
    settings = services.settings
    limit = settings.gradcheck_max_parameters
    n = estimated_parameters(spec, shape)
    if n > limit:
        raise _too_big(n, limit)
    fd = min(spec.gradcheck.fd_samples, MAX_FD_SAMPLES)
    needs = gradcheck_estimate(spec, batch=batch, fd_samples=fd, shape=shape)
    memory = int(settings.gradcheck_max_memory)
    if needs.total > memory:
        field = "batch" if needs.field == "gradcheck.max_batch" else needs.field
        message = needs.refusal(memory, "GRADQ_GRADCHECK_MAX_MEMORY", "this gradient check")
        raise InvalidSpec.at(field, message)


def _queue_room(services: Services) -> None:
    """429 when a check runs and ``gradcheck_queue`` checks already wait for their turn."""
    limit = services.settings.gradcheck_queue
    if services.gradcheck_slot.borrowed_tokens and services.gradcheck_waiting >= limit:
        raise ApiError(
            429,
            "too_many_checks",
            f"a gradient check is running and {services.gradcheck_waiting} wait for it, the "
            f"most that may (GRADQ_GRADCHECK_QUEUE={limit}); try again in a few seconds",
            headers={"Retry-After": str(RETRY_AFTER_S)},
        )


@router.post(
    "/gradcheck",
    response_model=schemas.GradcheckReport,
    openapi_extra=SPEC_BODY,
    responses={
        **errors(400, 404, 422, 429),
        CLIENT_GONE: {"description": "the client disconnected: its check was stopped"},
    },
)
async def gradcheck(
    spec: SpecDep,
    services: ServicesDep,
    tenant: TenantDep,
    request: Request,
    batch: Annotated[int, Query(ge=1, le=256, description="training rows to check on")] = 16,
) -> Any:
    """Manual backprop vs autograd vs finite differences, per layer (W1, b1, …), in float64,
    on the spec's model before training. `passed` is the verdict."""
    settings = services.settings
    ds = spec.dataset
    if ds.n_samples is not None and ds.n_samples > settings.gradcheck_max_rows:
        ds = ds.model_copy(update={"n_samples": settings.gradcheck_max_rows})
        spec = spec.model_copy(update={"dataset": ds})
    shape = None
    if ds.name == "upload":
        shape = await run_in_threadpool(check_upload, spec, services.datasets, tenant)
    _admit(spec, batch, shape, services)

    _queue_room(services)
    services.gradcheck_waiting += 1  # until its turn, counted at once: no await in between
    waiting = True

    stop = threading.Event()
    result: list[dict[str, Any]] = []
    failed: list[Exception] = []

    async def work() -> None:
        from core.gradcheck import GradcheckStopped

        nonlocal waiting
        try:
            async with services.gradcheck_slot:  # one check at a time
                services.gradcheck_waiting -= 1
                waiting = False
                result.append(
                    await anyio.to_thread.run_sync(
                        _check, spec, batch, services, tenant, stop.is_set
                    )
                )
        except GradcheckStopped:
            pass
        except Exception as exc:  # raised below, outside the task group (not as a group)
            failed.append(exc)

    try:
        async with anyio.create_task_group() as tasks:

            async def watch() -> None:
                """The body is read: the next message is the client's disconnect."""
                while (await request.receive())["type"] != "http.disconnect":
                    pass
                stop.set()  # a running check stops at its next chunk (its thread is awaited)
                tasks.cancel_scope.cancel()  # a check waiting for its turn leaves the queue

            tasks.start_soon(watch)
            await work()
            tasks.cancel_scope.cancel()  # done: stop watching
    finally:
        if waiting:  # left the queue before its turn
            services.gradcheck_waiting -= 1
    if failed:
        raise failed[0]
    if not result:
        return Response(status_code=CLIENT_GONE)
    return result[0]
