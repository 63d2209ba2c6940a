"""jobs.retries and jobs.not_before: a job's retries after a transient failure

``retries``: how many times the job went back to the queue after an attempt failed for a
transient class its spec's ``retry.on`` lists (``failed → queued``); NULL is none. It is
counted apart from the attempts a lost lease takes (``max_attempts``). ``not_before``: a
queued job is not claimed before this time (the retry's backoff); NULL is at once.

Two nullable ``ADD COLUMN``s on both backends: SQLite does not rebuild ``jobs`` for them, so
the queue-depth triggers of migration 0003 stay, and no row is rewritten.

Revision ID: 0009
Revises: 0008
Create Date: 2026-12-01
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0009"
down_revision: str | None = "0008"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.add_column("jobs", sa.Column("retries", sa.Integer(), nullable=True))
    op.add_column("jobs", sa.Column("not_before", sa.DateTime(timezone=True), nullable=True))


def downgrade() -> None:
    # plain DROP COLUMNs (SQLite 3.35+): batch mode would copy the table and lose 0003's triggers
    op.drop_column("jobs", "not_before")
    op.drop_column("jobs", "retries")
