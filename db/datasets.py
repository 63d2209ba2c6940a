"""Uploaded data sets: what was uploaded and where a worker on any machine reads it."""

from __future__ import annotations

import builtins
import uuid
from collections.abc import Sequence
from typing import cast

from sqlalchemy import Engine, Table, insert, select

from db.errors import DatasetNotFound
from db.models import Dataset, utcnow
from db.session import read_tx, write_tx
from db.views import DatasetView

DATASETS = cast(Table, Dataset.__table__)


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
    ) -> DatasetView:
        """Record an uploaded data set whose bytes already live at ``uri``."""
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
        )
        with write_tx(self._engine) as conn:
            conn.execute(insert(DATASETS), view.__dict__)
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
        return DatasetView(**row)

    def list(self, *, tenant: str | None = None) -> builtins.list[DatasetView]:
        """Data sets, newest first."""
        query = select(DATASETS).order_by(DATASETS.c.created_at.desc(), DATASETS.c.id.desc())
        if tenant is not None:
            query = query.where(DATASETS.c.tenant == tenant)
        with read_tx(self._engine) as conn:
            return [DatasetView(**r) for r in conn.execute(query).mappings()]
