"""a tenant's jobs listed from one index: (tenant_id, id) replaces (tenant_id)

Revision ID: 0005
Revises: 0004
Create Date: 2026-11-23 01:10:00.000000
"""

from __future__ import annotations

from alembic import op

revision = "0005"
down_revision = "0004"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_index("ix_jobs_tenant_id_id", "jobs", ["tenant_id", "id"], unique=False)
    op.drop_index("ix_jobs_tenant_id", table_name="jobs")


def downgrade() -> None:
    op.create_index("ix_jobs_tenant_id", "jobs", ["tenant_id"], unique=False)
    op.drop_index("ix_jobs_tenant_id_id", table_name="jobs")
