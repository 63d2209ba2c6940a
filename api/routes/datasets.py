"""``/v1/datasets``: upload a CSV (checked, then stored as an MLflow artifact), list, show."""

from __future__ import annotations

import hashlib
import re
from typing import Annotated

from fastapi import APIRouter, File, Form, UploadFile

from api import present, schemas
from api.deps import DatasetsDep, SettingsDep, TenantDep, TrackingDep
from api.errors import ApiError
from api.routes.common import AUTHENTICATED, errors
from core.csvdata import DataError, column_profiles, read_csv_table
from core.spec import FieldError
from workers.tracking.read import TrackingUnavailable

router = APIRouter(prefix="/v1/datasets", tags=["datasets"], dependencies=AUTHENTICATED)

# core names the spec's fields; for an upload the file and the target are form fields.
_FORM_FIELDS = {"dataset.path": "file", "dataset.target": "target", "dataset.task": "task"}


def _filename(name: str | None) -> str:
    base = re.sub(r"[^A-Za-z0-9._-]+", "_", (name or "").rsplit("/", 1)[-1]).strip("._")
    return (base or "data")[:100] + ("" if base.endswith(".csv") else ".csv")


@router.post(
    "",
    status_code=201,
    response_model=schemas.Dataset,
    responses=errors(400, 422),
)
def upload(
    file: Annotated[UploadFile, File(description="a CSV with a header row")],
    target: Annotated[str, Form(min_length=1, max_length=200, description="the column to predict")],
    datasets: DatasetsDep,
    settings: SettingsDep,
    tracking: TrackingDep,
    tenant: TenantDep,
    name: Annotated[str | None, Form(max_length=200, description="default: the file name")] = None,
) -> schemas.Dataset:
    """Upload a numeric CSV with a target column; train on it with
    `dataset: {name: upload, id: <id>, target: <column>}`."""
    data = file.file.read(settings.max_upload_bytes + 1)
    if len(data) > settings.max_upload_bytes:
        raise ApiError(
            413,
            "payload_too_large",
            f"the file is larger than the upload limit of {settings.max_upload_bytes:,} bytes",
            field="file",
        )
    try:
        table = read_csv_table(data, target=target)
    except DataError as exc:
        fields = [_FORM_FIELDS.get(e.field, e.field) for e in exc.errors]
        raise DataError(
            [
                FieldError(field=f, message=e.message)
                for f, e in zip(fields, exc.errors, strict=True)
            ]
        ) from None
    filename = _filename(file.filename)
    try:
        uri = tracking.store_dataset(
            data=data, filename=filename, tenant=tenant, name=name or filename
        )
    except Exception as exc:
        raise TrackingUnavailable(f"could not store the file in MLflow: {exc}") from exc
    view = datasets.add(
        tenant=tenant,
        name=name or filename,
        sha256=hashlib.sha256(data).hexdigest(),
        size=len(data),
        rows=int(table.X.shape[0]),
        columns=[*table.feature_names, target],
        target=target,
        uri=uri,
        profile={k: v.to_json() for k, v in column_profiles(table, target).items()},
    )
    return present.dataset(view)


@router.get("", response_model=schemas.DatasetList, responses=errors())
def list_datasets(datasets: DatasetsDep, tenant: TenantDep) -> schemas.DatasetList:
    """The tenant's uploaded data sets, newest first."""
    views = datasets.list(tenant=tenant)
    return schemas.DatasetList(items=[present.dataset(v) for v in views])


@router.get("/{dataset_id}", response_model=schemas.Dataset, responses=errors(404))
def get_dataset(dataset_id: str, datasets: DatasetsDep, tenant: TenantDep) -> schemas.Dataset:
    """One uploaded data set: rows, columns, sha256 and where its bytes live."""
    return present.dataset(datasets.get(dataset_id=dataset_id, tenant=tenant))
