"""queue depth per (tenant, priority), kept by triggers: a submit's counts in O(1)

A submit answers with its queue position and checks the tenant's quota. Counted over
``ix_jobs_queue`` / ``ix_jobs_tenant_status``, both would be linear in the queue (B-trees keep
no counts), paid once per group of submits, and on PostgreSQL slower still where fresh rows
are not yet all-visible (an index-only scan then visits the heap). ``queue_depth`` holds, per
tenant and priority, the jobs a claim could take (status ``queued`` and no cancel requested).
Triggers on ``jobs`` keep it in the same transaction as every insert, update and delete,
whatever code path wrote the job, so it cannot drift from the rows it counts.

SQLite: row triggers (one writer at a time, no lock order to keep). PostgreSQL: statement
triggers over transition tables, one upsert per (tenant, priority) the statement changed, in
that key's order, so that concurrent writers take the counter rows' locks in one order; the
function keeps the schema search path it was created with, so a session with another path
still counts into this schema's table.

A later migration that rebuilds ``jobs`` on SQLite (Alembic's batch mode copies the table)
drops these triggers: it must create them again (a test checks they exist at head).

Revision ID: 0003
Revises: 0002
Create Date: 2026-11-28
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0003"
down_revision: str | None = "0002"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

CLAIMABLE = "{row}.status = 'queued' AND NOT {row}.cancel_requested"
BUMP = (
    "INSERT INTO queue_depth (tenant, priority, queued) {source} "
    "ON CONFLICT (tenant, priority) DO UPDATE SET queued = queue_depth.queued + excluded.queued"
)

NEW_CLAIMABLE = CLAIMABLE.format(row="NEW")

SQLITE = [
    f"""CREATE TRIGGER jobs_queue_depth_insert AFTER INSERT ON jobs
    WHEN {CLAIMABLE.format(row="NEW")}
    BEGIN
        {BUMP.format(source="VALUES (NEW.tenant, NEW.priority, 1)")};
    END""",
    f"""CREATE TRIGGER jobs_queue_depth_delete AFTER DELETE ON jobs
    WHEN {CLAIMABLE.format(row="OLD")}
    BEGIN
        UPDATE queue_depth SET queued = queued - 1
        WHERE tenant = OLD.tenant AND priority = OLD.priority;
    END""",
    f"""CREATE TRIGGER jobs_queue_depth_update
    AFTER UPDATE OF status, cancel_requested, priority, tenant ON jobs
    WHEN ({CLAIMABLE.format(row="OLD")}) OR ({CLAIMABLE.format(row="NEW")})
    BEGIN
        UPDATE queue_depth SET queued = queued - 1
        WHERE tenant = OLD.tenant AND priority = OLD.priority
          AND {CLAIMABLE.format(row="OLD")};
        {BUMP.format(source="SELECT NEW.tenant, NEW.priority, 1 WHERE " + NEW_CLAIMABLE)};
    END""",
]

POSTGRES_FUNCTION = f"""
CREATE FUNCTION jobs_queue_depth() RETURNS trigger LANGUAGE plpgsql
SET search_path FROM CURRENT AS $$
DECLARE
    r record;
BEGIN
    IF TG_OP = 'INSERT' THEN
        FOR r IN SELECT n.tenant, n.priority, count(*) AS d FROM new_rows n
                 WHERE {CLAIMABLE.format(row="n")}
                 GROUP BY n.tenant, n.priority ORDER BY n.tenant, n.priority LOOP
            {BUMP.format(source="VALUES (r.tenant, r.priority, r.d)")};
        END LOOP;
    ELSIF TG_OP = 'DELETE' THEN
        FOR r IN SELECT o.tenant, o.priority, count(*) AS d FROM old_rows o
                 WHERE {CLAIMABLE.format(row="o")}
                 GROUP BY o.tenant, o.priority ORDER BY o.tenant, o.priority LOOP
            UPDATE queue_depth SET queued = queued - r.d
            WHERE tenant = r.tenant AND priority = r.priority;
        END LOOP;
    ELSE
        FOR r IN SELECT c.tenant, c.priority, sum(c.d) AS d FROM (
                     SELECT o.tenant, o.priority, -1 AS d FROM old_rows o
                     WHERE {CLAIMABLE.format(row="o")}
                     UNION ALL
                     SELECT n.tenant, n.priority, 1 AS d FROM new_rows n
                     WHERE {CLAIMABLE.format(row="n")}
                 ) c
                 GROUP BY c.tenant, c.priority HAVING sum(c.d) <> 0
                 ORDER BY c.tenant, c.priority LOOP
            {BUMP.format(source="VALUES (r.tenant, r.priority, r.d)")};
        END LOOP;
    END IF;
    RETURN NULL;
END
$$"""

POSTGRES_TRIGGERS = [
    "CREATE TRIGGER jobs_queue_depth_insert AFTER INSERT ON jobs "
    "REFERENCING NEW TABLE AS new_rows FOR EACH STATEMENT EXECUTE FUNCTION jobs_queue_depth()",
    "CREATE TRIGGER jobs_queue_depth_update AFTER UPDATE ON jobs "
    "REFERENCING OLD TABLE AS old_rows NEW TABLE AS new_rows "
    "FOR EACH STATEMENT EXECUTE FUNCTION jobs_queue_depth()",
    "CREATE TRIGGER jobs_queue_depth_delete AFTER DELETE ON jobs "
    "REFERENCING OLD TABLE AS old_rows FOR EACH STATEMENT EXECUTE FUNCTION jobs_queue_depth()",
]

TRIGGERS = ["jobs_queue_depth_insert", "jobs_queue_depth_update", "jobs_queue_depth_delete"]


def upgrade() -> None:
    op.create_table(
        "queue_depth",
        sa.Column("tenant", sa.String(100), nullable=False),
        sa.Column("priority", sa.Integer(), nullable=False),
        sa.Column("queued", sa.BigInteger(), nullable=False),
        sa.PrimaryKeyConstraint("tenant", "priority", name="pk_queue_depth"),
    )
    if op.get_bind().dialect.name == "postgresql":
        op.execute("LOCK TABLE jobs IN SHARE ROW EXCLUSIVE MODE")  # no writes until it counts
        op.execute(POSTGRES_FUNCTION)
        for statement in POSTGRES_TRIGGERS:
            op.execute(statement)
    else:
        for statement in SQLITE:
            op.execute(statement)
    op.execute(
        "INSERT INTO queue_depth (tenant, priority, queued) "
        f"SELECT tenant, priority, count(*) FROM jobs j WHERE {CLAIMABLE.format(row='j')} "
        "GROUP BY tenant, priority"
    )


def downgrade() -> None:
    for name in TRIGGERS:
        op.execute(f"DROP TRIGGER IF EXISTS {name}" + (
            " ON jobs" if op.get_bind().dialect.name == "postgresql" else ""
        ))  # fmt: skip
    if op.get_bind().dialect.name == "postgresql":
        op.execute("DROP FUNCTION IF EXISTS jobs_queue_depth()")
    op.drop_table("queue_depth")
