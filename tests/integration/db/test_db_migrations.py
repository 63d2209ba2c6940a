"""The schema comes only from the migrations, and it matches the models on both backends."""

from __future__ import annotations

from pathlib import Path

import pytest
from sqlalchemy import inspect
from typer.testing import CliRunner

from db.cli import db_app
from db.migrate import check, upgrade
from db.session import make_engine

TABLES = {"jobs", "job_events", "datasets", "api_keys", "alembic_version", "queue_depth"}


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
