"""tenants get limits (rate, queued/running jobs, storage) and can be disabled; keys can expire,
be revoked, and record when they were last used

Revision ID: 0008
Revises: 0007
Create Date: 2026-12-01 10:00:00.000000
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0008"
down_revision = "0007"
branch_labels = None
depends_on = None

ACTIVE = "status IN ('queued', 'running', 'cancelling')"


def upgrade() -> None:
    op.add_column("tenants", sa.Column("rate_limit", sa.Float(), nullable=True))
    op.add_column("tenants", sa.Column("rate_burst", sa.Integer(), nullable=True))
    op.add_column("tenants", sa.Column("max_queued_jobs", sa.Integer(), nullable=True))
    op.add_column("tenants", sa.Column("max_running_jobs", sa.Integer(), nullable=True))
    op.add_column("tenants", sa.Column("max_storage_bytes", sa.BigInteger(), nullable=True))
    op.add_column("tenants", sa.Column("disabled_at", sa.DateTime(timezone=True), nullable=True))
    op.add_column("api_keys", sa.Column("expires_at", sa.DateTime(timezone=True), nullable=True))
    op.add_column("api_keys", sa.Column("revoked_at", sa.DateTime(timezone=True), nullable=True))
    op.add_column("api_keys", sa.Column("last_used_at", sa.DateTime(timezone=True), nullable=True))
    op.create_index("ix_api_keys_prefix", "api_keys", ["prefix"])
    # The queued-jobs quota counts a tenant's unfinished jobs on every submission: this index
    # holds only those, so the count stays small however many finished jobs a tenant has.
    op.create_index(
        "ix_jobs_tenant_id_active", "jobs", ["tenant_id"], postgresql_where=sa.text(ACTIVE)
    )


def downgrade() -> None:
    op.drop_index("ix_jobs_tenant_id_active", table_name="jobs")
    op.drop_index("ix_api_keys_prefix", table_name="api_keys")
    for column in ("last_used_at", "revoked_at", "expires_at"):
        op.drop_column("api_keys", column)
    for column in (
        "disabled_at",
        "max_storage_bytes",
        "max_running_jobs",
        "max_queued_jobs",
        "rate_burst",
        "rate_limit",
    ):
        op.drop_column("tenants", column)
