"""Indexes that keep a scheduler release independent of the backlog

A release (app/services/scheduler.py) runs on every shard finish, under its pool's lock. It
read every waiting shard of the pool to find each tenant's head; now it probes, per tenant and
priority, the oldest running job with a waiting shard (`ix_jobs_running_by_queue_tenant`), and
counts what is in flight from the shards released and not finished only
(`ix_job_shards_in_flight`, as many rows as the pools' windows).

Revision ID: 0018
Revises: 0016
Create Date: 2026-12-07 01:40:00.000000
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0018"
down_revision = "0016"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_index(
        "ix_jobs_running_by_queue_tenant",
        "jobs",
        ["queue", "tenant_id", "priority", "created_at", "id"],
        postgresql_where=sa.text("status = 'running'"),
    )
    op.create_index(
        "ix_job_shards_in_flight",
        "job_shards",
        ["job_id"],
        postgresql_where=sa.text("status IN ('queued', 'running') AND dispatched_at IS NOT NULL"),
    )


def downgrade() -> None:
    op.drop_index("ix_job_shards_in_flight", table_name="job_shards")
    op.drop_index("ix_jobs_running_by_queue_tenant", table_name="jobs")
