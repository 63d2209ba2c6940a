"""A job's files: ``/v1/jobs/{id}/artifacts`` (the listing) and
``/v1/jobs/{id}/artifacts/{path}`` (one file), read from the job's MLflow run through the
tracking read interface, under the caller's key: another tenant's job is a 404, and only a
path that the listing holds is ever fetched."""

from __future__ import annotations

import shutil
import tempfile
from urllib.parse import quote

from fastapi import APIRouter
from fastapi.responses import FileResponse
from starlette.background import BackgroundTask

from api import schemas
from api.deps import StoreDep, TenantDep, TrackingDep
from api.errors import ApiError
from api.routes.common import AUTHENTICATED, errors

router = APIRouter(prefix="/v1/jobs", tags=["jobs"], dependencies=AUTHENTICATED)

MAX_PATH = 1000


@router.get("/{job_id}/artifacts", response_model=schemas.Artifacts, responses=errors(404, 422))
def list_artifacts(
    job_id: str, store: StoreDep, tracking: TrackingDep, tenant: TenantDep
) -> schemas.Artifacts:
    """Every file of the job's run (checkpoints, gradient-check reports, the learning-curve
    picture, `error.txt`, the model's files under `model/`), with its size and URL; empty
    while the run is not known yet."""
    view = store.get(job_id=job_id, tenant=tenant)
    found = tracking.artifacts(view.mlflow_run_id) if view.mlflow_run_id else []
    base = f"/v1/jobs/{view.id}/artifacts"
    return schemas.Artifacts(
        job_id=view.id,
        artifacts=[
            schemas.ArtifactFile(path=a.path, size=a.size, url=f"{base}/{quote(a.path)}")
            for a in found
        ],
    )


@router.get(
    "/{job_id}/artifacts/{path:path}",
    response_class=FileResponse,
    responses={
        200: {
            "description": "the file's bytes",
            "content": {"application/octet-stream": {"schema": {"type": "string"}}},
        },
        **errors(404, 422),
    },
)
def get_artifact(
    job_id: str, path: str, store: StoreDep, tracking: TrackingDep, tenant: TenantDep
) -> FileResponse:
    """One file of the job's run, by its path in the listing (`plots/learning_curve.png`,
    `checkpoints/best/checkpoint.pt`, `model/MLmodel`, …)."""
    check_path(path)
    view = store.get(job_id=job_id, tenant=tenant)
    missing = ApiError(404, "not_found", f"job {view.id} has no artifact {path!r}", field="path")
    if view.mlflow_run_id is None:
        raise missing
    folder = tempfile.mkdtemp(prefix="gradq-artifact-")
    try:
        local = tracking.fetch_artifact(view.mlflow_run_id, path, folder)
    except BaseException:
        shutil.rmtree(folder, ignore_errors=True)
        raise
    if local is None or not local.is_file():
        shutil.rmtree(folder, ignore_errors=True)
        raise missing
    return FileResponse(
        local,
        filename=local.name,
        content_disposition_type="inline" if path.endswith(".png") else "attachment",
        headers={"X-Content-Type-Options": "nosniff"},
        background=BackgroundTask(shutil.rmtree, folder, ignore_errors=True),
    )


def check_path(path: str) -> None:
    """A 422 naming ``path`` unless it is a relative path inside the run: ``/``-separated
    names, none empty, ``.`` or ``..``, no backslash or control character."""
    parts = path.split("/")
    bad = (
        not path
        or len(path) > MAX_PATH
        or "\\" in path
        or any(ord(c) < 32 for c in path)
        or any(p in ("", ".", "..") for p in parts)
    )
    if bad:
        raise ApiError(
            422,
            "invalid",
            f"artifact path {path[:200]!r} is not a path inside the job's run "
            "(names separated by '/', no '..', '.', empty name or backslash)",
            field="path",
        )
