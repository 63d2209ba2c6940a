"""jobs.mlflow_experiment_id: the experiment of the job's MLflow run, beside its run id

The attempt stores it with the run id (one fenced write), so that the API builds the run's
link in the MLflow UI (``{ui}/#/experiments/{experiment}/runs/{run}``) from its own settings,
without asking MLflow which experiment the run is in. Nullable: jobs whose run was stored
before this migration have none (the API still finds it the old way, see
``api.routes.jobs.run_link``).

A plain ``ADD COLUMN`` on both backends: SQLite does not rebuild ``jobs`` for it, so the
queue-depth triggers of migration 0003 stay.

Revision ID: 0004
Revises: 0003
Create Date: 2026-12-02
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0004"
down_revision: str | None = "0003"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.add_column("jobs", sa.Column("mlflow_experiment_id", sa.String(64), nullable=True))


def downgrade() -> None:
    # a plain DROP COLUMN (SQLite 3.35+): batch mode would copy the table and lose 0003's triggers
    op.drop_column("jobs", "mlflow_experiment_id")
