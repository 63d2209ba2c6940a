"""``JobStore.delete`` and ``finished_runs`` on SQLite and PostgreSQL: only a finished job of
the caller's tenant is removed, with its events; what a retention policy expires."""

from __future__ import annotations

from collections.abc import Callable
from datetime import timedelta

import pytest
from sqlalchemy import Engine, func, select

from core.spec import JobSpec
from db.errors import InvalidTransition, JobNotFound
from db.models import EVENTS, utcnow
from db.store import JobStore


def test_only_a_finished_job_of_its_tenant_is_deleted_with_its_events(
    store: JobStore, engine: Engine, make_spec: Callable[..., JobSpec]
) -> None:
    done = store.submit(spec=make_spec(), tenant="a")
    store.claim(owner="w", lease_seconds=30, ids=[done.id])
    store.set_run(job_id=done.id, attempt=1, mlflow_run_id="run-1")
    store.finish(job_id=done.id, attempt=1, status="succeeded")
    queued = store.submit(spec=make_spec(), tenant="a")
    with pytest.raises(JobNotFound):
        store.delete(job_id=done.id, tenant="b")
    with pytest.raises(InvalidTransition) as busy:
        store.delete(job_id=queued.id, tenant="a")
    assert (busy.value.from_status, busy.value.to_status) == ("queued", "deleted")
    later = utcnow() + timedelta(seconds=1)
    assert [r[:3] for r in store.finished_runs(before=later)] == [(done.id, "a", "run-1")]
    assert store.finished_runs(before=later, tenant="b") == []
    assert store.delete(job_id=done.id, tenant="a").mlflow_run_id == "run-1"
    with pytest.raises(JobNotFound):
        store.get(job_id=done.id)
    with engine.connect() as conn:
        left = conn.execute(select(func.count()).where(EVENTS.c.job_id == done.id)).scalar()
    assert left == 0
    assert [j.id for j in store.list(tenant="a")[0]] == [queued.id]
    assert store.finished_runs(before=later) == []
