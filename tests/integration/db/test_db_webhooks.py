"""The webhooks' outbox on both backends: a terminal move of a job or a sweep writes one row
per subscribed webhook of its tenant in the move's own transaction (both commit, or
neither); deliveries are claimed by a lease that a second deliverer cannot take."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

import pytest
from sqlalchemy import Engine, insert, select, text
from sqlalchemy.exc import DBAPIError

from core.spec import JobSpec
from db.errors import StoreError
from db.models import DELIVERIES, EVENTS, JOBS, WEBHOOKS
from db.states import JobStatus
from db.store import JobStore
from db.sweeps import SweepStore
from db.webhooks import EVENTS as ALL
from db.webhooks import WebhookNotFound, WebhookStore


def outbox(engine: Engine) -> list[Any]:
    with engine.connect() as conn:
        return list(conn.execute(select(DELIVERIES).order_by(DELIVERIES.c.id)))


def running(store: JobStore, spec: JobSpec, tenant: str = "a") -> tuple[str, int]:
    job = store.submit(spec=spec, tenant=tenant)
    (claimed,) = store.claim(owner="w", lease_seconds=60, ids=[job.id])
    return job.id, claimed.attempt


def test_terminal_moves_write_a_row_per_subscribed_webhook(
    engine: Engine, store: JobStore, make_spec: Callable[..., JobSpec]
) -> None:
    hooks = WebhookStore(engine)
    every = hooks.create(tenant="a", url="https://a.example/all", events=ALL)
    failed_only = hooks.create(tenant="a", url="https://a.example/f", events=["job.failed"])
    hooks.create(tenant="b", url="https://b.example/all", events=ALL)  # another tenant's

    done, attempt = running(store, make_spec())
    store.finish(job_id=done, attempt=attempt, status="succeeded", result={"acc": 1.0})
    failed = store.submit(spec=make_spec(), tenant="a").id
    store.fail_queued(job_id=failed, reason="no node")
    cancelled = store.submit(spec=make_spec(), tenant="a").id
    store.request_cancel(job_id=cancelled)
    running(store, make_spec())  # a move that is not terminal tells nobody

    rows = {(r.webhook_id, r.event_id) for r in outbox(engine)}
    assert rows == {
        (every.id, f"job.succeeded:{done}"),
        (every.id, f"job.failed:{failed}"),
        (failed_only.id, f"job.failed:{failed}"),
        (every.id, f"job.cancelled:{cancelled}"),
    }
    row = next(r for r in outbox(engine) if r.subject_id == done)
    assert (row.tenant, row.event, row.attempts, row.delivered_at) == (
        "a",
        "job.succeeded",
        0,
        None,
    )
    assert row.next_attempt_at is not None  # due at once


def test_a_lost_lease_and_a_sweeps_end_are_told(
    engine: Engine, store: JobStore, make_spec: Callable[..., JobSpec]
) -> None:
    hooks, sweeps = WebhookStore(engine), SweepStore(engine)
    hook = hooks.create(tenant="a", url="https://a.example/", events=ALL)
    job = store.submit(spec=make_spec(max_attempts=1), tenant="a").id
    store.claim(owner="w", lease_seconds=0.01, ids=[job])
    time.sleep(0.05)
    assert store.requeue_expired() == [(job, JobStatus.FAILED)]
    sweep = sweeps.create(spec={"name": "s"}, name="s", tenant="a")
    assert sweeps.claim(owner="c", lease_seconds=60) == [sweep.id]
    sweeps.finish(sweep_id=sweep.id, owner="c", status="succeeded")
    queued = sweeps.create(spec={"name": "q"}, name="q", tenant="a")
    assert sweeps.claim(owner="c", lease_seconds=60) == [queued.id]  # held, not started
    sweeps.request_cancel(sweep_id=queued.id, tenant="a")  # ends it: told
    sweeps.finish(sweep_id=queued.id, owner="c", status="cancelled")  # its controller: not again
    assert {r.event_id for r in outbox(engine) if r.webhook_id == hook.id} == {
        f"job.failed:{job}",
        f"sweep.succeeded:{sweep.id}",
        f"sweep.cancelled:{queued.id}",
    }


REFUSE = {
    "sqlite": [
        "CREATE TRIGGER refuse_outbox BEFORE INSERT ON webhook_deliveries "
        "BEGIN SELECT RAISE(ABORT, 'outbox refused'); END"
    ],
    "postgresql": [
        "CREATE FUNCTION refuse_outbox() RETURNS trigger LANGUAGE plpgsql AS "
        "$$ BEGIN RAISE EXCEPTION 'outbox refused'; END $$",
        "CREATE TRIGGER refuse_outbox BEFORE INSERT ON webhook_deliveries "
        "FOR EACH ROW EXECUTE FUNCTION refuse_outbox()",
    ],
}


def test_the_move_and_its_outbox_row_commit_together(
    engine: Engine, store: JobStore, make_spec: Callable[..., JobSpec]
) -> None:
    """With the outbox's insert made to fail, the terminal move fails with it: the job is
    still running, without its event; once it can be written, both are."""
    hooks, sweeps = WebhookStore(engine), SweepStore(engine)
    hooks.create(tenant="a", url="https://a.example/", events=ALL)
    job, attempt = running(store, make_spec())
    sweep = sweeps.create(spec={"name": "s"}, name="s", tenant="a")
    sweeps.claim(owner="c", lease_seconds=60)
    with engine.begin() as conn:
        for statement in REFUSE[engine.dialect.name]:
            conn.exec_driver_sql(statement)
    with pytest.raises((StoreError, DBAPIError), match="outbox refused"):
        store.finish(job_id=job, attempt=attempt, status="succeeded")
    with pytest.raises((StoreError, DBAPIError), match="outbox refused"):
        sweeps.finish(sweep_id=sweep.id, owner="c", status="succeeded")
    assert store.get(job_id=job).status is JobStatus.RUNNING
    assert [e.to_status for e in store.events(job_id=job)][-1] is JobStatus.RUNNING
    assert sweeps.get(sweep_id=sweep.id).status == "queued"
    assert outbox(engine) == []

    with engine.begin() as conn:
        conn.execute(
            text(
                "DROP TRIGGER refuse_outbox"
                + (" ON webhook_deliveries" if engine.dialect.name == "postgresql" else "")
            )
        )
    store.finish(job_id=job, attempt=attempt, status="succeeded")
    sweeps.finish(sweep_id=sweep.id, owner="c", status="succeeded")
    assert [r.event_id for r in outbox(engine)] == [
        f"job.succeeded:{job}",
        f"sweep.succeeded:{sweep.id}",
    ]
    with engine.connect() as conn:
        last = conn.execute(
            select(EVENTS.c.to_status).where(EVENTS.c.job_id == job).order_by(EVENTS.c.id.desc())
        ).first()
        assert last is not None and last[0] == "succeeded"
        assert conn.execute(select(JOBS.c.status).where(JOBS.c.id == job)).scalar() == "succeeded"


def test_a_held_delivery_is_not_taken_again_until_its_lease_ends(
    engine: Engine, store: JobStore, make_spec: Callable[..., JobSpec]
) -> None:
    hooks = WebhookStore(engine)
    hook = hooks.create(tenant="a", url="https://a.example/", events=ALL)
    job = store.submit(spec=make_spec(), tenant="a").id
    store.request_cancel(job_id=job)

    rotated = hooks.rotate(webhook_id=hook.id, tenant="a").secret  # after the event was stored
    (first,) = hooks.claim(owner="one", lease_seconds=0.3, limit=10)
    assert (first.attempt, first.url, first.secret) == (1, hook.url, rotated)
    assert hooks.claim(owner="two", lease_seconds=60, limit=10) == []  # held by "one"
    time.sleep(0.4)  # the lease of "one" ran out: "one" may have sent it, or not
    (second,) = hooks.claim(owner="two", lease_seconds=60, limit=10)
    assert second.attempt == 2
    # the first holder's late outcome is refused (fenced); the second's counts
    assert not hooks.record(delivery_id=first.id, owner="one", attempt=1, delivered=True)
    assert hooks.record(delivery_id=second.id, owner="two", attempt=2, delivered=True,
                        status_code=204)  # fmt: skip
    [log], _ = hooks.deliveries(webhook_id=hook.id, tenant="a")
    assert (log.attempts, log.uncertain, log.last_status_code) == (2, 1, 204)
    assert log.delivered_at is not None and log.next_attempt_at is None
    assert hooks.claim(owner="two", lease_seconds=60, limit=10) == []
    hooks.delete(webhook_id=hook.id, tenant="a")  # its log goes with it
    assert outbox(engine) == []


def test_webhooks_are_their_tenants(engine: Engine) -> None:
    hooks = WebhookStore(engine)
    hook = hooks.create(tenant="a", url="https://a.example/", events=["job.failed"])
    for call in (
        lambda: hooks.get(webhook_id=hook.id, tenant="b"),
        lambda: hooks.rotate(webhook_id=hook.id, tenant="b"),
        lambda: hooks.delete(webhook_id=hook.id, tenant="b"),
        lambda: hooks.deliveries(webhook_id=hook.id, tenant="b"),
    ):
        with pytest.raises(WebhookNotFound):
            call()
    assert hooks.list(tenant="b") == []
    rotated = hooks.rotate(webhook_id=hook.id, tenant="a")
    assert rotated.secret is not None and rotated.secret != hook.secret
    hooks.delete(webhook_id=hook.id, tenant="a")
    assert hooks.list(tenant="a") == []


def test_a_failure_that_is_retried_is_told_only_once_final(
    engine: Engine, store: JobStore, make_spec: Callable[..., JobSpec]
) -> None:
    """A transient failure the job retries is no end: no outbox row; the failure that ends
    it (its retries spent) is told once, and the job's earlier ones never."""
    hooks = WebhookStore(engine)
    hook = hooks.create(tenant="a", url="https://a.example/f", events=["job.failed"])
    away = {"type": "tracking_unavailable", "message": "MLflow could not be reached"}
    retry = {"max": 1, "on": ["tracking_unavailable"], "backoff_seconds": 0}
    job_id, attempt = running(store, make_spec(retry=retry))
    assert store.finish(job_id=job_id, attempt=attempt, status="failed", error=away).status is (
        JobStatus.QUEUED
    )
    assert outbox(engine) == []  # retried: nobody is told
    [again] = store.claim(owner="w", lease_seconds=60, ids=[job_id])
    last = store.finish(job_id=job_id, attempt=again.attempt, status="failed", error=away)
    assert last.status is JobStatus.FAILED and last.retries == 1
    assert [(r.webhook_id, r.event_id) for r in outbox(engine)] == [
        (hook.id, f"job.failed:{job_id}")
    ]


def test_a_database_error_never_carries_a_rows_values(engine: Engine) -> None:
    """A failing statement's error (logged as it is) names the statement, not its values:
    a webhook's secret cannot reach a log this way."""
    hooks = WebhookStore(engine)
    hook = hooks.create(tenant="a", url="https://a.example/x", events=ALL)
    with pytest.raises(DBAPIError) as caught, engine.begin() as conn:
        conn.execute(insert(WEBHOOKS).values(
            id=hook.id, tenant="a", url="https://a.example/y", events=[],
            secret="whsec_visible", created_at=hook.created_at))  # fmt: skip
    assert "whsec_visible" not in str(caught.value)
    assert "parameters hidden" in str(caught.value)
