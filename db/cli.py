"""``gradq db ...``: the database commands (the lead mounts ``db_app`` under ``gradq db``)."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Annotated

import typer

from core.defaults import DATABASE_URL

db_app = typer.Typer(
    help="Database commands: schema migrations, queue recount.",
    no_args_is_help=True,
)

UrlOption = Annotated[
    str | None,
    typer.Option(
        "--url", help="Database URL (default: $GRADQ_DATABASE_URL, else the embedded SQLite)."
    ),
]


def resolve_url(url: str | None) -> str:
    """The URL to use: ``url``, else ``$GRADQ_DATABASE_URL``, else the embedded SQLite
    (:data:`core.defaults.DATABASE_URL`, as the service's settings)."""
    home = os.environ.get("GRADQ_HOME")  # gradq --home DIR, as the service's settings
    in_home = f"sqlite:///{Path(home).expanduser().resolve() / 'gradq.db'}" if home else None
    return url or os.environ.get("GRADQ_DATABASE_URL") or in_home or DATABASE_URL


@db_app.command()
def upgrade(url: UrlOption = None) -> None:
    """Apply every migration (alembic upgrade head); creates the SQLite folder if needed."""
    from db import migrate  # alembic: loaded by the command that uses it (a fast `gradq`)

    target = resolve_url(url)
    migrate.upgrade(target)
    typer.echo(f"database at {_safe(target)} is at the newest schema")


@db_app.command()
def check(url: UrlOption = None) -> None:
    """Compare the models with the migrated schema; exit 1 when they differ."""
    from db import migrate

    target = resolve_url(url)
    diffs = migrate.check(target)
    for diff in diffs:
        typer.echo(repr(diff))
    if diffs:
        raise typer.Exit(code=1)
    typer.echo("models and schema agree")


@db_app.command("recount-queue")
def recount_queue(url: UrlOption = None) -> None:
    """Recount the queue's per-tenant, per-priority depths from the jobs and correct them
    (for a database restored with its triggers disabled, or a table rebuilt by hand)."""
    from db.session import make_engine
    from db.store import JobStore

    engine = make_engine(resolve_url(url))
    try:
        changed = JobStore(engine).recount_queue_depth()
    finally:
        engine.dispose()
    for (tenant, priority), (was, now) in sorted(changed.items()):
        typer.echo(f"tenant {tenant!r} priority {priority}: {was} → {now}")
    typer.echo(f"corrected {len(changed)} count(s)" if changed else "queue depths agree with jobs")


def _safe(url: str) -> str:
    from sqlalchemy import make_url

    return make_url(url).render_as_string(hide_password=True)
