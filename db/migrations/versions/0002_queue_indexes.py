"""queue indexes that answer the submit's counts from the index alone

``ix_jobs_queue`` (status, cancel_requested, priority, created_at, id) replaces ``ix_jobs_claim``
(status, priority, created_at): a job's queue position and the claim's filter read only the
index. ``ix_jobs_tenant_status`` (tenant, status) counts a tenant's queued jobs (the quota)
without visiting its finished ones.

Revision ID: 0002
Revises: 0001
Create Date: 2026-11-28
"""

from __future__ import annotations

from collections.abc import Sequence

from alembic import op

revision: str = "0002"
down_revision: str | None = "0001"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

QUEUE = ["status", "cancel_requested", "priority", "created_at", "id"]


def upgrade() -> None:
    op.create_index("ix_jobs_queue", "jobs", QUEUE)
    op.drop_index("ix_jobs_claim", table_name="jobs")
    op.create_index("ix_jobs_tenant_status", "jobs", ["tenant", "status"])


def downgrade() -> None:
    op.drop_index("ix_jobs_tenant_status", table_name="jobs")
    op.create_index("ix_jobs_claim", "jobs", ["status", "priority", "created_at"])
    op.drop_index("ix_jobs_queue", table_name="jobs")
