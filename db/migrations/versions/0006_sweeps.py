"""sweeps, trials, trial_reports; the job status ``pruned``; jobs.stop_reason

A sweep (``sweeps``) makes trials (``trials``), each an ordinary job; ``trial_reports`` keeps
the objective each trial reported at a rung of asynchronous successive halving with the
decision taken. A trial stopped by its rung ends ``pruned``, a terminal job status of its own.

The status check of ``jobs`` takes the new status. PostgreSQL: the constraint is dropped
and added again. SQLite cannot alter a constraint, and rebuilding ``jobs`` would drop the
queue-depth triggers and, with foreign keys on, delete every job's events (a DROP TABLE
cascades): the check's text is changed in ``sqlite_schema`` instead, which SQLite's manual
allows for a change that leaves the stored rows valid (section 7 of "ALTER TABLE": every row
that met the old check meets the new one).

Revision ID: 0006
Revises: 0005
Create Date: 2026-12-01
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects.postgresql import JSONB

revision: str = "0006"
down_revision: str | None = "0005"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

OLD = "status IN ('queued', 'running', 'succeeded', 'failed', 'cancelled')"
NEW = "status IN ('queued', 'running', 'succeeded', 'failed', 'cancelled', 'pruned')"
JSON = sa.JSON().with_variant(JSONB(), "postgresql")


def _jobs_check(old: str, new: str) -> None:
    bind = op.get_bind()
    if bind.dialect.name == "postgresql":
        # its name is the naming convention's (``ck_jobs_ck_jobs_status`` from 0001): found
        name = bind.exec_driver_sql(
            "SELECT conname FROM pg_constraint WHERE conrelid = 'jobs'::regclass "
            "AND contype = 'c' AND strpos(pg_get_constraintdef(oid), 'cancelled') > 0"
        ).scalar_one()
        op.execute(f'ALTER TABLE jobs DROP CONSTRAINT "{name}"')
        op.execute(f'ALTER TABLE jobs ADD CONSTRAINT "{name}" CHECK ({new})')
        return
    sql = bind.exec_driver_sql(
        "SELECT sql FROM sqlite_master WHERE type = 'table' AND name = 'jobs'"
    ).scalar_one()
    if old not in sql:
        raise RuntimeError(f"jobs' status check is not the expected one: {sql}")
    version = bind.exec_driver_sql("PRAGMA schema_version").scalar_one()
    bind.exec_driver_sql("PRAGMA writable_schema = ON")
    bind.exec_driver_sql(
        "UPDATE sqlite_master SET sql = ? WHERE type = 'table' AND name = 'jobs'",
        (sql.replace(old, new),),
    )
    bind.exec_driver_sql(f"PRAGMA schema_version = {int(version) + 1}")
    bind.exec_driver_sql("PRAGMA writable_schema = OFF")


def upgrade() -> None:
    _jobs_check(OLD, NEW)
    # why a running job was asked to stop when it is not a cancel (``pruned``)
    op.add_column("jobs", sa.Column("stop_reason", sa.String(16), nullable=True))
    op.create_table(
        "sweeps",
        sa.Column("id", sa.String(36), nullable=False),
        sa.Column("tenant", sa.String(100), nullable=False),
        sa.Column("name", sa.String(200), nullable=False),
        sa.Column("spec", JSON, nullable=False),
        sa.Column("status", sa.String(16), nullable=False),
        sa.Column("cancel_requested", sa.Boolean(), nullable=False),
        sa.Column("lease_owner", sa.String(200), nullable=True),
        sa.Column("lease_expires_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("best", JSON, nullable=True),
        sa.Column("error", sa.Text(), nullable=True),
        sa.Column("notes", JSON, nullable=True),
        sa.Column("mlflow_run_id", sa.String(64), nullable=True),
        sa.Column("mlflow_experiment_id", sa.String(64), nullable=True),
        sa.Column("idempotency_key", sa.String(200), nullable=True),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("started_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("finished_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False),
        sa.CheckConstraint(OLD, name="ck_sweeps_status"),
        sa.PrimaryKeyConstraint("id", name="pk_sweeps"),
    )
    op.create_index("ix_sweeps_tenant_created", "sweeps", ["tenant", "created_at", "id"])
    op.create_index("ix_sweeps_status_lease", "sweeps", ["status", "lease_expires_at"])
    op.create_table(
        "trials",
        sa.Column("sweep_id", sa.String(36), nullable=False),
        sa.Column("number", sa.Integer(), nullable=False),
        sa.Column("job_id", sa.String(36), nullable=False),
        sa.Column("params", JSON, nullable=False),
        sa.Column("objective", sa.Float(), nullable=True),
        sa.Column("told", sa.Boolean(), nullable=False),
        sa.Column("ended_seq", sa.Integer(), nullable=True),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.ForeignKeyConstraint(
            ["sweep_id"], ["sweeps.id"], name="fk_trials_sweep_id_sweeps", ondelete="CASCADE"
        ),
        sa.PrimaryKeyConstraint("sweep_id", "number", name="pk_trials"),
        sa.UniqueConstraint("job_id", name="uq_trials_job_id"),
    )
    op.create_index("ix_trials_sweep_objective", "trials", ["sweep_id", "objective"])
    op.create_table(
        "trial_reports",
        sa.Column("id", sa.Integer(), autoincrement=True, nullable=False),
        sa.Column("sweep_id", sa.String(36), nullable=False),
        sa.Column("job_id", sa.String(36), nullable=False),
        sa.Column("rung", sa.Integer(), nullable=False),
        sa.Column("value", sa.Float(), nullable=True),
        sa.Column("promoted", sa.Boolean(), nullable=False),
        sa.Column("attempt", sa.Integer(), nullable=False),
        sa.Column("at", sa.DateTime(timezone=True), nullable=False),
        sa.ForeignKeyConstraint(
            ["sweep_id"],
            ["sweeps.id"],
            name="fk_trial_reports_sweep_id_sweeps",
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("id", name="pk_trial_reports"),
        sa.UniqueConstraint("job_id", "rung", name="uq_trial_reports_job_id_rung"),
    )
    op.create_index("ix_trial_reports_sweep_rung", "trial_reports", ["sweep_id", "rung", "id"])


def downgrade() -> None:
    op.drop_table("trial_reports")
    op.drop_table("trials")
    op.drop_table("sweeps")
    op.execute("DELETE FROM jobs WHERE status = 'pruned'")
    _jobs_check(NEW, OLD)
    op.execute("ALTER TABLE jobs DROP COLUMN stop_reason")  # SQLite 3.35+ and PostgreSQL
