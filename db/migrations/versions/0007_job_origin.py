"""jobs.origin_job_id: the job a rerun was made from

``POST /v1/jobs/{id}/rerun`` makes a new job from another one's spec (patched); the new job
keeps the id of the job it was made from. Nullable: a job submitted as such has none. A
plain ``ADD COLUMN`` on both backends (SQLite does not rebuild ``jobs``: the queue-depth
triggers of migration 0003 stay).

Revision ID: 0007
Revises: 0006
Create Date: 2026-12-01
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0007"
down_revision: str | None = "0006"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.add_column("jobs", sa.Column("origin_job_id", sa.String(36), nullable=True))


def downgrade() -> None:
    # a plain DROP COLUMN (SQLite 3.35+): batch mode would copy the table and lose 0003's triggers
    op.drop_column("jobs", "origin_job_id")
