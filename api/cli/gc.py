"""``gradq gc``: the retention policy applied (the settings' ``GRADQ_RETENTION_DAYS`` and
``GRADQ_RETENTION_KEEP``), on the database and MLflow the settings name. A dry run by
default: it prints what would be freed; ``--apply`` frees it."""

from __future__ import annotations

from datetime import timedelta
from typing import Annotated

import typer


def gc(
    apply: Annotated[
        bool, typer.Option("--apply", help="free the bytes (default: only say what would be)")
    ] = False,
) -> None:
    """Free the artifact bytes of the jobs finished more than GRADQ_RETENTION_DAYS ago (their
    runs' artifacts and logged models; GRADQ_RETENTION_KEEP=checkpoints keeps each one's last
    and best checkpoints), a dry run unless --apply. A registered model version's files stay."""
    # imported here: the database and MLflow stacks take a second to import, and every other
    # command (`gradq cancel`, `gradq --version`) would pay it at start
    from api.settings import Settings
    from db.migrate import upgrade
    from db.models import utcnow
    from db.session import make_engine
    from db.store import JobStore
    from workers.tracking.retention import Freed, checkpoints, free_run

    settings = Settings()
    if settings.retention_days is None:
        typer.echo("no retention policy: GRADQ_RETENTION_DAYS is not set, nothing expires")
        return
    upgrade(settings.database_url)
    engine = make_engine(settings.database_url)
    before = utcnow() - timedelta(days=settings.retention_days)
    keep = checkpoints() if settings.retention_keep == "checkpoints" else ()
    total, jobs = Freed(), 0
    try:
        for job_id, tenant, run_id, finished in JobStore(engine).finished_runs(before=before):
            freed = free_run(
                tracking_uri=settings.mlflow_tracking_uri, run_id=run_id, keep=keep, apply=apply
            )
            if freed.files:
                jobs += 1
                typer.echo(f"{job_id}  {tenant}  finished {finished:%Y-%m-%d}  "
                           f"{freed.files} files  {freed.bytes:,} bytes")  # fmt: skip
                total.add(freed)
    finally:
        engine.dispose()
    done = "freed" if apply else "would free"
    typer.echo(f"{done} {total.bytes:,} bytes in {total.files} files of {jobs} jobs finished "
               f"before {before:%Y-%m-%d %H:%M} UTC"
               + ("" if apply else " (a dry run: --apply frees them)"))  # fmt: skip


def register(app: typer.Typer) -> None:
    app.command()(gc)
