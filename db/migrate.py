"""Run and check the Alembic migrations from code, independent of the working directory."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from alembic import command
from alembic.autogenerate import compare_metadata
from alembic.config import Config
from alembic.runtime.migration import MigrationContext

from db.models import Base
from db.session import make_engine, translated

MIGRATIONS_DIR = Path(__file__).resolve().parent / "migrations"


def alembic_config(url: str | None = None) -> Config:
    """An Alembic ``Config`` built in code: the package's migrations, and ``url`` if given."""
    cfg = Config()
    cfg.set_main_option("script_location", str(MIGRATIONS_DIR))
    if url is not None:
        cfg.set_main_option("sqlalchemy.url", url.replace("%", "%%"))
    return cfg


def upgrade(url: str, revision: str = "head") -> None:
    """Bring the database at ``url`` to ``revision`` (default: the newest), in one transaction.

    Safe to run again: an up-to-date database is left as it is.
    """
    engine = make_engine(url)
    try:
        with translated(), engine.begin() as conn:
            cfg = alembic_config(url)
            cfg.attributes["connection"] = conn
            command.upgrade(cfg, revision)
    finally:
        engine.dispose()


def check(url: str) -> list[Any]:
    """The differences between the models and the schema at ``url`` (empty: they agree).

    Each entry is an Alembic autogenerate diff tuple, e.g. ``("add_column", ...)``.
    """
    engine = make_engine(url)
    try:
        with translated(), engine.connect() as conn:
            ctx = MigrationContext.configure(conn, opts={"compare_type": True})
            return list(compare_metadata(ctx, Base.metadata))
    finally:
        engine.dispose()
