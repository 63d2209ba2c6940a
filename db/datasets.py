"""Uploaded data sets: what was uploaded and where a worker on any machine reads it."""

from __future__ import annotations

import builtins
import uuid
from collections.abc import Mapping, Sequence
from typing import Any, cast

from sqlalchemy import Engine, RowMapping, Table, insert, select

from db.errors import DatasetNotFound
from db.models import Dataset, utcnow
from db.session import read_tx, write_tx
from db.views import DatasetView

DATASETS = cast(Table, Dataset.__table__)


def _view(row: RowMapping) -> DatasetView:
    """A stored row as a view. ``columns`` holds the column names, or (with no migration of
    the table) ``{"names": [...], "profile": {...}}`` for a data set recorded with profiles."""
    values = dict(row)
    stored = values["columns"]
    if isinstance(stored, dict):
        values["columns"], values["profile"] = list(stored["names"]), stored.get("profile")
    return DatasetView(**values)


class DatasetStore:
    """The uploaded data sets of every tenant. Methods are keyword-only."""

    def __init__(self, engine: Engine) -> None:
        self._engine = engine

    def add(
        self,
        *,
        tenant: str,
        name: str,
        sha256: str,
        size: int,
        rows: int,
        columns: Sequence[str],
        target: str | None,
        uri: str,
        profile: Mapping[str, Mapping[str, Any]] | None = None,
    ) -> DatasetView:
        """Record an uploaded data set whose bytes already live at ``uri``, with ``profile``
        (each column as a target would be, ``core.uploads.ColumnProfile.to_json``)."""
        view = DatasetView(
            id=str(uuid.uuid4()),
            tenant=tenant,
            name=name,
            sha256=sha256,
            size=size,
            rows=rows,
            columns=list(columns),
            target=target,
            uri=uri,
            created_at=utcnow(),
            profile=None if profile is None else {k: dict(v) for k, v in profile.items()},
        )
        row = {k: v for k, v in view.__dict__.items() if k != "profile"}
        if view.profile is not None:
            row["columns"] = {"names": view.columns, "profile": view.profile}
        with write_tx(self._engine) as conn:
            conn.execute(insert(DATASETS), row)
        return view

    def get(self, *, dataset_id: str, tenant: str | None = None) -> DatasetView:
        """The data set; :class:`DatasetNotFound` if absent or another tenant's."""
        query = select(DATASETS).where(DATASETS.c.id == dataset_id)
        if tenant is not None:
            query = query.where(DATASETS.c.tenant == tenant)
        with read_tx(self._engine) as conn:
            row = conn.execute(query).mappings().first()
        if row is None:
            raise DatasetNotFound(dataset_id)
        return _view(row)

    def list(self, *, tenant: str | None = None) -> builtins.list[DatasetView]:
        """Data sets, newest first."""
        query = select(DATASETS).order_by(DATASETS.c.created_at.desc(), DATASETS.c.id.desc())
        if tenant is not None:
            query = query.where(DATASETS.c.tenant == tenant)
        with read_tx(self._engine) as conn:
            return [_view(r) for r in conn.execute(query).mappings()]
