"""api_keys.role, max_running, max_priority: operator keys and per-tenant caps

A key's ``role`` is "tenant" (every key stored before this migration) or "operator" (it may
also read the service's own metrics). ``max_running`` and ``max_priority`` cap the key's
tenant: the most jobs it may have running at once and the highest priority it may submit;
NULL sets no cap (``db.keys.KeyStore.tenant_caps`` combines a tenant's keys).

Plain ``ADD COLUMN``s on both backends; ``role`` is NOT NULL with a server default, so the
rows already there take "tenant".

Revision ID: 0005
Revises: 0004
Create Date: 2026-12-01
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0005"
down_revision: str | None = "0004"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.add_column(
        "api_keys", sa.Column("role", sa.String(16), nullable=False, server_default="tenant")
    )
    op.add_column("api_keys", sa.Column("max_running", sa.Integer(), nullable=True))
    op.add_column("api_keys", sa.Column("max_priority", sa.Integer(), nullable=True))


def downgrade() -> None:
    op.drop_column("api_keys", "max_priority")
    op.drop_column("api_keys", "max_running")
    op.drop_column("api_keys", "role")
