"""``/v1/sweeps``: submit a sweep, list, show, its trials, cancel.

A sweep's body is a :class:`core.sweep.SweepSpec`, validated by ``core.sweep.parse_sweep``
(field paths such as ``space["optimizer.lr"]``) within the service's limits; it is stored
``queued`` and a dispatcher's sweep controller (``workers.sweeps``) makes its trials. A
sweep is its tenant's: another tenant gets 404, as for a job.
"""

from __future__ import annotations

import contextlib
import json
from typing import Annotated, Any, Literal

from fastapi import APIRouter, Query, Request

from api import schemas
from api.deps import ServicesDep, SettingsDep, StoreDep, SweepsDep, TenantDep
from api.errors import ApiError
from api.routes.common import AUTHENTICATED, TagQuery, errors, load_yaml, parsed, yaml_body
from core.spec import InvalidSpec
from core.sweep import ObjectiveSpec, SweepSpec, parse_sweep
from db.errors import InvalidTransition, JobNotFound
from db.filters import parse_tag
from db.states import TERMINAL
from db.sweeps import SWEEP_STATUSES, SweepStore, SweepView, TrialView

router = APIRouter(prefix="/v1/sweeps", tags=["sweeps"], dependencies=AUTHENTICATED)

SWEEP_BODY: dict[str, Any] = {
    "requestBody": {
        "required": True,
        "content": {"application/json": {"schema": SweepSpec.model_json_schema()}},
    }
}


def present(view: SweepView, sweeps: SweepStore) -> schemas.Sweep:
    """A sweep with its trials' counts and the objective's history."""
    trials, _ = sweeps.trials(sweep_id=view.id)
    counts = {s: 0 for s in ("queued", "running", "succeeded", "failed", "cancelled", "pruned")}
    for t in trials:
        counts[t.status.value] = counts.get(t.status.value, 0) + 1
    mode = _mode(view)
    history, best = [], None
    for t in sorted((t for t in trials if t.ended_seq is not None), key=lambda t: t.ended_seq or 0):
        if t.objective is None:
            continue
        if t.status.value == "succeeded" and (
            best is None or (t.objective > best if mode == "max" else t.objective < best)
        ):
            best = t.objective
        history.append(
            schemas.SweepHistoryPoint(
                trial=t.number, job_id=t.job_id, status=t.status.value, objective=t.objective,
                best=best,
            )
        )  # fmt: skip
    return schemas.Sweep(
        id=view.id,
        name=view.name,
        status=view.status,
        spec=view.spec,
        counts=counts,
        trials=len(trials),
        total_trials=_total(view),
        best=schemas.SweepBest(**view.best) if view.best else None,
        history=history,
        error=view.error,
        notes=view.notes,
        cancel_requested=view.cancel_requested,
        mlflow_run_id=view.mlflow_run_id,
        created_at=view.created_at,
        started_at=view.started_at,
        finished_at=view.finished_at,
    )


def _mode(view: SweepView) -> Literal["min", "max"]:
    objective = view.spec.get("objective") or {}
    mode = objective.get("mode")
    return ObjectiveSpec(
        metric=str(objective.get("metric", "val_loss")),
        mode=mode if mode in ("min", "max") else None,
    ).direction()


def _total(view: SweepView) -> int:
    try:
        return parse_sweep(view.spec, max_trials=10**9).trial_count()
    except InvalidSpec:
        return 0


def trial_item(t: TrialView) -> schemas.TrialItem:
    epoch = (t.progress or {}).get("epoch")
    return schemas.TrialItem(
        id=t.job_id,
        trial=t.number,
        status=t.status,
        params=t.params,
        objective=t.objective,
        epoch=epoch if isinstance(epoch, int) else None,
        mlflow_run_id=t.mlflow_run_id,
    )


@router.post(
    "",
    status_code=201,
    response_model=schemas.Sweep,
    responses=errors(422),
    openapi_extra=SWEEP_BODY,
)
async def submit_sweep(
    request: Request,
    sweeps: SweepsDep,
    settings: SettingsDep,
    services: ServicesDep,
    tenant: TenantDep,
) -> schemas.Sweep:
    """Queue a sweep: its space is checked against the base job spec (every bound and choice
    must make a valid spec), the search's size against the service's limits."""
    raw = await request.body()
    if not raw.strip():
        raise ApiError(400, "malformed_json", "the body is empty: send a sweep as JSON")
    if yaml_body(request):
        data = load_yaml(raw)
    else:
        try:
            data = json.loads(raw)
        except (ValueError, RecursionError) as exc:
            raise ApiError(400, "malformed_json", f"the body is not valid JSON: {exc}") from None
    sweep = parse_sweep(data, limits=settings.limits, max_trials=settings.max_sweep_trials)
    cap = (await services.access.caps(tenant)).max_priority
    if cap is not None and sweep.base.priority > cap:
        raise InvalidSpec.at(
            "base.priority",
            f"at most {cap} for tenant {tenant} (its cap), not {sweep.base.priority}",
        )
    if sweep.base.dataset.name == "csv" and settings.auth == "keys":
        raise InvalidSpec.at(
            "base.dataset.name", "a csv path names a file on the server; upload it"
        )
    view = sweeps.create(
        spec=sweep.spec.model_dump(mode="json"), name=sweep.spec.name, tenant=tenant
    )
    return present(view, sweeps)


@router.get("", response_model=schemas.SweepPage, responses=errors(422))
def list_sweeps(
    sweeps: SweepsDep,
    tenant: TenantDep,
    status: Annotated[
        Literal["queued", "running", "succeeded", "failed", "cancelled"] | None,
        Query(description="only sweeps in this status"),
    ] = None,
    tag: TagQuery = [],  # noqa: B006 (FastAPI copies the default)
    limit: Annotated[int, Query(ge=1, le=200)] = 50,
    cursor: Annotated[str | None, Query(max_length=500, description="from next_cursor")] = None,
) -> schemas.SweepPage:
    """The tenant's sweeps, newest first, a page at a time; with ``tag``, only those with
    every tag."""
    assert status is None or status in SWEEP_STATUSES
    tags = parsed("tag", tag, parse_tag)
    page, next_cursor = sweeps.list(
        tenant=tenant, status=status, limit=limit, cursor=cursor, tags=tags
    )
    return schemas.SweepPage(items=[present(v, sweeps) for v in page], next_cursor=next_cursor)


@router.get("/{sweep_id}", response_model=schemas.Sweep, responses=errors(404))
def get_sweep(sweep_id: str, sweeps: SweepsDep, tenant: TenantDep) -> schemas.Sweep:
    """Status, trials by status, the best trial so far and the objective's history."""
    return present(sweeps.get(sweep_id=sweep_id, tenant=tenant), sweeps)


@router.get("/{sweep_id}/trials", response_model=schemas.TrialPage, responses=errors(404, 422))
def list_trials(
    sweep_id: str,
    sweeps: SweepsDep,
    tenant: TenantDep,
    sort: Annotated[
        Literal["trial", "objective"],
        Query(description="by trial number, or best objective first"),
    ] = "trial",
    limit: Annotated[int, Query(ge=1, le=1000)] = 100,
    cursor: Annotated[str | None, Query(max_length=500, description="from next_cursor")] = None,
) -> schemas.TrialPage:
    """The sweep's trials: each one's job id, status, parameters, objective and run."""
    view = sweeps.get(sweep_id=sweep_id, tenant=tenant)
    items, next_cursor = sweeps.trials(
        sweep_id=sweep_id, sort=sort, mode=_mode(view), limit=limit, cursor=cursor
    )
    return schemas.TrialPage(items=[trial_item(t) for t in items], next_cursor=next_cursor)


@router.post(
    "/{sweep_id}/cancel", status_code=202, response_model=schemas.Sweep, responses=errors(404)
)
def cancel_sweep(
    sweep_id: str, sweeps: SweepsDep, store: StoreDep, tenant: TenantDep
) -> schemas.Sweep:
    """Cancel: no new trial; its queued trials cancelled now, its running ones stop between
    two steps; the sweep ends ``cancelled`` once they all ended, keeping its results.
    Idempotent; a sweep that ended is answered as it is."""
    view = sweeps.request_cancel(sweep_id=sweep_id, tenant=tenant)
    if view.cancel_requested:
        for trial in sweeps.trials(sweep_id=sweep_id)[0]:
            if trial.status not in TERMINAL:
                with contextlib.suppress(InvalidTransition, JobNotFound):  # it ended meanwhile
                    store.request_cancel(job_id=trial.job_id, tenant=tenant)
    return present(sweeps.get(sweep_id=sweep_id, tenant=tenant), sweeps)
