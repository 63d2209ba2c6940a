"""``/healthz`` (alive), ``/readyz`` (database, Ray and MLflow, each named; 503 when one is
not) and ``/metrics`` (Prometheus text format)."""

from __future__ import annotations

import logging
import re
import statistics
from collections.abc import Mapping
from datetime import datetime
from typing import Annotated

import anyio
import anyio.to_thread
from fastapi import APIRouter, Depends, Request
from fastapi.responses import JSONResponse, PlainTextResponse

from api import schemas
from api.deps import OperatorDep, Services, ServicesDep, get_tenant
from api.middleware import ResponseCounts
from api.routes.common import errors
from db.states import JobStatus
from workers.probes import NotReady

router = APIRouter(tags=["health"])
Authorized = Annotated[str, Depends(get_tenant)]  # keys on: every route but /healthz needs one

PROBE_TIMEOUT_SECONDS = 5.0
DEPENDENCIES = {"database": "the database", "ray": "Ray", "mlflow": "the MLflow tracking store"}
_PASSWORD_IN_URI = re.compile(r"(://[^/\s:@]*:)[^/\s@]+@")
log = logging.getLogger("gradq.api")


def mask_passwords(text: str) -> str:
    """``text`` with the password of each URI in it (``scheme://user:password@host``)
    replaced by ``***``."""
    return _PASSWORD_IN_URI.sub(r"\1***@", text)


RECENT_JOBS = 200


@router.get("/healthz", response_model=schemas.Health)
async def healthz() -> schemas.Health:
    """The process answers (no dependency is checked)."""
    return schemas.Health(status="ok")


@router.get(
    "/readyz",
    response_model=schemas.Readiness,
    responses={503: {"model": schemas.Readiness, "description": "a dependency is not ready"}},
)
async def readyz(services: ServicesDep, _: Authorized) -> JSONResponse:
    """Database, Ray and MLflow, each checked and named; 503 when one is not reachable."""
    checks = {
        "database": services.store.ping,
        "ray": services.ray_probe,
        "mlflow": services.tracking.ping,
    }
    results: dict[str, schemas.Check] = {}
    for name, probe in checks.items():
        what = DEPENDENCIES[name]
        try:
            with anyio.fail_after(PROBE_TIMEOUT_SECONDS):
                detail = await anyio.to_thread.run_sync(probe, abandon_on_cancel=True)
            results[name] = schemas.Check(ok=True, detail=mask_passwords(str(detail))[:500])
        except TimeoutError:
            log.warning("readyz: %s gave no answer within %g s", what, PROBE_TIMEOUT_SECONDS)
            results[name] = schemas.Check(
                ok=False, detail=f"{what} gave no answer within {PROBE_TIMEOUT_SECONDS:g} s"
            )
        except NotReady as exc:  # words of gradq's own, written to be shown
            results[name] = schemas.Check(ok=False, detail=f"{what} is not ready: {exc}"[:500])
        except Exception as exc:  # the why is for the operator's log, not for every client
            log.warning("readyz: %s is not reachable: %s", what, mask_passwords(repr(exc)))
            results[name] = schemas.Check(
                ok=False, detail=f"{what} is not reachable (the service's log says why)"
            )
    ready = all(c.ok for c in results.values())
    body = schemas.Readiness(status="ready" if ready else "unavailable", checks=results)
    return JSONResponse(body.model_dump(mode="json"), status_code=200 if ready else 503)


@router.get(
    "/metrics",
    response_class=PlainTextResponse,
    responses={
        200: {"content": {"text/plain": {"schema": {"type": "string"}}}},
        **errors(403),
    },
)
def metrics(request: Request, services: ServicesDep, _: OperatorDep) -> PlainTextResponse:
    """Prometheus text format: jobs by status, queue depth, running attempts, claim latency,
    and this process's HTTP answers by status class. With API keys, for operators' keys
    only (it counts every tenant's jobs)."""
    counts = getattr(request.app.state, "responses", None)  # api.main's CountResponses
    by_class = counts.by_class if isinstance(counts, ResponseCounts) else None
    return PlainTextResponse(
        prometheus_text(services, by_class), media_type="text/plain; version=0.0.4; charset=utf-8"
    )


def prometheus_text(services: Services, responses: Mapping[str, int] | None = None) -> str:
    """The metrics text; ``responses``: HTTP answers by status class ("2xx", …), if counted."""
    store = services.store
    counts = store.counts_by_status()
    lines = [
        "# HELP gradq_jobs Jobs in the database, by status.",
        "# TYPE gradq_jobs gauge",
        *(f'gradq_jobs{{status="{s}"}} {n}' for s, n in sorted(counts.items())),
        "# HELP gradq_queue_depth Jobs waiting to be claimed.",
        "# TYPE gradq_queue_depth gauge",
        f"gradq_queue_depth {counts[JobStatus.QUEUED.value]}",
        "# HELP gradq_running_attempts Attempts holding a lease now.",
        "# TYPE gradq_running_attempts gauge",
        f"gradq_running_attempts {counts[JobStatus.RUNNING.value]}",
    ]
    # Claim latency, derived from the most recent jobs that were claimed: started_at -
    # created_at. started_at is set again by each claim, so for a retried job this includes
    # its earlier attempts; the queue keeps no per-claim history to do better.
    recent, _ = store.list(limit=RECENT_JOBS)
    waits = sorted(
        (v.started_at - v.created_at).total_seconds()
        for v in recent
        if isinstance(v.started_at, datetime)
    )
    lines += [
        f"# HELP gradq_claim_latency_seconds Submit to claim, over the {RECENT_JOBS} newest "
        "jobs that were claimed.",
        "# TYPE gradq_claim_latency_seconds summary",
    ]
    if waits:
        for q in (0.5, 0.9, 0.99):
            lines.append(f'gradq_claim_latency_seconds{{quantile="{q}"}} {_quantile(waits, q):.6f}')
    lines += [
        f"gradq_claim_latency_seconds_sum {sum(waits):.6f}",
        f"gradq_claim_latency_seconds_count {len(waits)}",
    ]
    if responses is not None:
        lines += [
            "# HELP gradq_http_responses_total HTTP answers of this server process, by status "
            "class (a request that raised before answering counts as 5xx).",
            "# TYPE gradq_http_responses_total counter",
            *(f'gradq_http_responses_total{{status="{c}"}} {n}' for c, n in responses.items()),
        ]
    return "\n".join(lines) + "\n"


def _quantile(sorted_values: list[float], q: float) -> float:
    if len(sorted_values) == 1:
        return sorted_values[0]
    return statistics.quantiles(sorted_values, n=100, method="inclusive")[round(q * 100) - 1]
