"""``/v1/gradcheck``: the validator's per-layer report for a spec, synchronously.

The spec's model is built freshly initialised on a small batch of its data and the manual
backprop is compared with autograd and central differences in float64. Bounded so that a
request cannot hold the server: at most ``gradcheck_max_parameters`` parameters (422 at
``model.hidden``), at most ``gradcheck_max_rows`` generated rows for a synthetic set, at most
``MAX_FD_SAMPLES`` finite-difference coordinates per tensor, two checks at a time, each in a
worker thread.
"""

from __future__ import annotations

import tempfile
from typing import Annotated, Any

import anyio.to_thread
from fastapi import APIRouter, Query

from api import present, schemas
from api.deps import Services, ServicesDep, TenantDep
from api.routes.common import AUTHENTICATED, SPEC_BODY, SpecDep, errors
from api.routes.jobs import check_upload
from core.spec import InvalidSpec, JobSpec, count_parameters, estimated_parameters

router = APIRouter(prefix="/v1", tags=["gradcheck"], dependencies=AUTHENTICATED)

MAX_FD_SAMPLES = 32


def _too_big(n: int, limit: int) -> InvalidSpec:
    return InvalidSpec.at(
        "model.hidden",
        f"{n:,} parameters exceed the gradient check's limit of {limit:,}; check a smaller "
        "model (the backprop is the same at every width)",
    )


def _check(spec: JobSpec, batch: int, services: Services, tenant: str) -> dict[str, Any]:
    from core.data import load_dataset
    from core.gradcheck import check_spec
    from core.losses import output_width

    settings = services.settings
    ds = spec.dataset
    if ds.n_samples is not None and ds.n_samples > settings.gradcheck_max_rows:
        ds = ds.model_copy(update={"n_samples": settings.gradcheck_max_rows})
    with tempfile.TemporaryDirectory(prefix="gradq-gradcheck-") as tmp:
        path = None
        if ds.name == "upload" and ds.id is not None:
            check_upload(spec, services.datasets, tenant)
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
    report = check_spec(spec, batch_size=batch, fd_samples=fd, data=data)
    return {**present.finite(report.to_dict()), "parameters": n}


@router.post(
    "/gradcheck",
    response_model=schemas.GradcheckReport,
    openapi_extra=SPEC_BODY,
    responses=errors(400, 404, 422),
)
async def gradcheck(
    spec: SpecDep,
    services: ServicesDep,
    tenant: TenantDep,
    batch: Annotated[int, Query(ge=1, le=256, description="training rows to check on")] = 16,
) -> dict[str, Any]:
    """Manual backprop vs autograd vs finite differences, per layer (W1, b1, …), in float64,
    on the spec's model before training. `passed` is the verdict."""
    limit = services.settings.gradcheck_max_parameters
    estimate = estimated_parameters(spec)
    if estimate > limit:
        raise _too_big(estimate, limit)
    return await anyio.to_thread.run_sync(
        _check, spec, batch, services, tenant, limiter=services.gradcheck_slots
    )
