"""jobs have a priority; workers say their process count; an index of unfinished shards

Revision ID: 0009
Revises: 0008
Create Date: 2026-12-01 10:00:00.000000
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0009"
down_revision = "0008"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.add_column(
        "jobs",
        sa.Column("priority", sa.String(10), nullable=False, server_default="normal"),
    )
    # Each worker says how many pool processes it runs: the scheduler's default window.
    op.add_column("worker_heartbeats", sa.Column("processes", sa.Integer(), nullable=True))
    # What the scheduler reads on every release: queued shards, the released ones (in flight)
    # and the ones waiting for the window. Partial, so finished shards (almost all) cost nothing.
    op.create_index(
        "ix_job_shards_queued_running",
        "job_shards",
        ["job_id", "index"],
        postgresql_where=sa.text("status IN ('queued', 'running')"),
    )


def downgrade() -> None:
    op.drop_index("ix_job_shards_queued_running", table_name="job_shards")
    op.drop_column("worker_heartbeats", "processes")
    op.drop_column("jobs", "priority")
