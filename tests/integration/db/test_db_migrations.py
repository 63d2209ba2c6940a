"""The schema comes only from the migrations, and it matches the models on both backends."""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path

import pytest
from sqlalchemy import insert, inspect, select, update
from typer.testing import CliRunner

from core.spec import parse_spec
from db.cli import db_app
from db.keys import KEYS, KeyStore, hash_key
from db.migrate import check, upgrade
from db.models import EVENTS, JOBS, QUEUE_DEPTH
from db.session import make_engine
from db.store import JobStore
from db.views import KeyGrant
from tests.integration.db.conftest import insert_queued

TABLES = {
    "jobs", "job_events", "datasets", "api_keys", "alembic_version", "queue_depth",
    "sweeps", "trials", "trial_reports", "webhooks", "webhook_subscriptions",
    "webhook_deliveries",
}  # fmt: skip


def test_upgrade_of_an_empty_database_matches_the_models(db_url: str) -> None:
    before = check(db_url)
    assert {d[0] for d in before} >= {"add_table"}  # the check does see a missing schema
    upgrade(db_url)
    assert check(db_url) == []
    engine = make_engine(db_url)
    try:
        insp = inspect(engine)
        assert set(insp.get_table_names()) == TABLES
        uniques = {tuple(u["column_names"]) for u in insp.get_unique_constraints("jobs")}
        assert ("tenant", "idempotency_key") in uniques
        fks = insp.get_foreign_keys("job_events")
        assert fks[0]["referred_table"] == "jobs" and fks[0]["options"].get("ondelete") == "CASCADE"
    finally:
        engine.dispose()


def test_upgrade_twice_is_a_no_op(db_url: str) -> None:
    upgrade(db_url)
    upgrade(db_url)
    assert check(db_url) == []


def test_cli_upgrade_takes_url_option_then_env(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    runner = CliRunner()
    explicit = f"sqlite:///{tmp_path / 'a' / 'x.db'}"
    result = runner.invoke(db_app, ["upgrade", "--url", explicit])
    assert result.exit_code == 0, result.output
    assert check(explicit) == []

    from_env = f"sqlite:///{tmp_path / 'b' / 'y.db'}"
    monkeypatch.setenv("GRADQ_DATABASE_URL", from_env)
    assert runner.invoke(db_app, ["upgrade"]).exit_code == 0
    assert check(from_env) == []
    assert runner.invoke(db_app, ["check"]).exit_code == 0


def test_cli_default_is_the_embedded_sqlite(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("GRADQ_DATABASE_URL", raising=False)
    monkeypatch.chdir(tmp_path)
    result = CliRunner().invoke(db_app, ["upgrade"])
    assert result.exit_code == 0, result.output
    assert (tmp_path / "gradq-data" / "gradq.db").is_file()
    assert check("sqlite:///./gradq-data/gradq.db") == []


def test_0004_adds_the_experiment_id_to_an_existing_database(db_url: str) -> None:
    """A database at 0003 with jobs in it (one whose run was stored, one queued) upgrades in
    place: the jobs keep every value, their experiment id is NULL (the API then finds the
    link the old way), the queue-depth triggers survive, and the schema matches the models."""
    upgrade(db_url, "0003")
    engine = make_engine(db_url)
    try:
        columns = {c["name"] for c in inspect(engine).get_columns("jobs")}
        assert "mlflow_experiment_id" not in columns
        now = datetime.now(UTC)
        old = dict(tenant="t", name="n", spec={"dataset": "iris"}, priority=0,
                   max_attempts=3, cancel_requested=False, created_at=now, updated_at=now)  # fmt: skip
        with engine.begin() as conn:
            conn.execute(insert(JOBS).values(
                id="ran", status="succeeded", attempt=1, mlflow_run_id="r" * 32, **old))  # fmt: skip
            conn.execute(insert(JOBS).values(
                id="waits", status="queued", attempt=0, **old))  # fmt: skip
    finally:
        engine.dispose()
    upgrade(db_url)
    assert check(db_url) == []
    engine = make_engine(db_url)
    try:
        store = JobStore(engine)
        ran = store.get(job_id="ran")
        assert (ran.status, ran.mlflow_run_id, ran.mlflow_experiment_id) == (
            "succeeded", "r" * 32, None)  # fmt: skip
        assert store.get(job_id="waits").mlflow_experiment_id is None
        depth = select(QUEUE_DEPTH.c.queued)
        with engine.connect() as conn:
            assert conn.execute(depth).scalars().all() == [1]
        [claimed] = store.claim(owner="w", lease_seconds=30)  # the queue still works at 0004
        store.set_run(job_id="waits", attempt=claimed.attempt, mlflow_run_id="s" * 32,
                      mlflow_experiment_id="7")  # fmt: skip
        assert store.get(job_id="waits").mlflow_experiment_id == "7"
        with engine.connect() as conn:  # migration 0003's triggers survived the new column
            assert conn.execute(depth).scalars().all() == [0]
    finally:
        engine.dispose()


def test_0005_gives_existing_keys_the_tenant_role_and_no_caps(db_url: str) -> None:
    """A database at 0004 with a key upgrades in place: the key still authenticates, as a
    tenant's key with no caps of its own, and the schema matches the models."""
    upgrade(db_url, "0004")
    engine = make_engine(db_url)
    try:
        columns = {c["name"] for c in inspect(engine).get_columns("api_keys")}
        assert not columns & {"role", "max_running", "max_priority"}
        # 0004's row, written by hand: the store is newer than that schema
        with engine.begin() as conn:
            conn.execute(insert(KEYS).values(
                id="k1", tenant="acme", key_hash=hash_key("gq_" + "k" * 40), prefix="gq_kkkkkkkk",
                created_at=datetime.now(UTC), revoked_at=None))  # fmt: skip
    finally:
        engine.dispose()
    upgrade(db_url)
    assert check(db_url) == []
    engine = make_engine(db_url)
    try:
        keys = KeyStore(engine)
        assert keys.lookup(key="gq_" + "k" * 40) == KeyGrant(tenant="acme", role="tenant")
        [view] = keys.list(tenant="acme")
        assert (view.role, view.max_running, view.max_priority) == ("tenant", None, None)
        _, new = keys.create(tenant="acme", role="operator", max_running=4)
        assert keys.lookup(key=new) == KeyGrant(tenant="acme", role="operator")
    finally:
        engine.dispose()


def test_0006_lets_jobs_be_pruned_and_keeps_every_job_event_and_trigger(db_url: str) -> None:
    """A database at 0005 with a running job upgrades in place: the job and its events are
    kept (on SQLite the status check is changed without rebuilding ``jobs``, which would
    have cascaded to its events), the queue-depth counts still follow the jobs, and a
    running job may now end ``pruned``; the schema matches the models."""
    from db.states import JobStatus

    upgrade(db_url, "0005")
    engine = make_engine(db_url)
    try:
        store = JobStore(engine)  # jobs inserted as 0005 holds them (no later column)
        running, queued = insert_queued(engine, 2, spec=parse_spec({"dataset": "iris"}))
        with engine.begin() as conn:  # claimed as a store of 0005 claims (today's reads 0009)
            conn.execute(
                update(JOBS).where(JOBS.c.id == running).values(status="running", attempt=1)
            )
            conn.execute(insert(EVENTS).values(
                job_id=running, at=datetime.now(UTC), from_status="queued",
                to_status="running", attempt=1, reason="claimed by w"))  # fmt: skip
        events_before = len(store.events(job_id=running))
        upgrade(db_url)
        assert check(db_url) == []
        assert len(store.events(job_id=running)) == events_before == 2
        assert store.get(job_id=queued).status is JobStatus.QUEUED
        assert store.recount_queue_depth() == {}  # the triggers kept counting
        store.submit(spec=parse_spec({"dataset": "iris"}))
        assert store.recount_queue_depth() == {}
        view = store.finish(job_id=running, attempt=1, status="pruned")
        assert view.status is JobStatus.PRUNED
        # the check still refuses a status it does not know
        with engine.connect() as conn, pytest.raises(Exception, match=r"(?i)check"):
            conn.exec_driver_sql(
                "UPDATE jobs SET status = 'lost' WHERE id = ?"
                if engine.dialect.name == "sqlite"
                else "UPDATE jobs SET status = 'lost' WHERE id = %s",
                (queued,),
            )
    finally:
        engine.dispose()


def test_0007_adds_the_origin_of_a_rerun_and_keeps_jobs_and_triggers(db_url: str) -> None:
    """A database at 0006 with queued jobs upgrades in place: the jobs are kept with no
    origin, the queue-depth triggers still count, and a downgrade drops the column only."""
    from alembic import command

    from db.migrate import alembic_config

    upgrade(db_url, "0006")
    engine = make_engine(db_url)
    try:
        store = JobStore(engine)
        [old] = insert_queued(engine, 1, spec=parse_spec({"dataset": "iris"}))
        upgrade(db_url)
        assert check(db_url) == []
        assert store.get(job_id=old).origin_job_id is None
        assert store.recount_queue_depth() == {}
        down = make_engine(db_url)
        with down.begin() as conn:
            cfg = alembic_config(db_url)
            cfg.attributes["connection"] = conn
            command.downgrade(cfg, "0006")
        down.dispose()
        assert "origin_job_id" not in {c["name"] for c in inspect(engine).get_columns("jobs")}
        with engine.connect() as conn:
            assert conn.execute(select(JOBS.c.id).where(JOBS.c.id == old)).scalar() == old
        upgrade(db_url)
        assert store.count_queued() == 1 and store.recount_queue_depth() == {}
    finally:
        engine.dispose()
