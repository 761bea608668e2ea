"""model versions validated in a worker: status, error, attempts, dispatch and lease

Revision ID: 0006
Revises: 0005
Create Date: 2026-12-01 09:00:00.000000
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

revision = "0006"
down_revision = "0005"
branch_labels = None
depends_on = None

JSON = sa.JSON().with_variant(postgresql.JSONB(astext_type=sa.Text()), "postgresql")


def upgrade() -> None:
    # Every version registered before this was validated in the API before its row was written.
    op.add_column(
        "model_versions",
        sa.Column("status", sa.String(length=20), nullable=False, server_default="ready"),
    )
    op.add_column("model_versions", sa.Column("error", JSON, nullable=True))
    op.add_column(
        "model_versions",
        sa.Column("attempts", sa.Integer(), nullable=False, server_default="0"),
    )
    op.add_column(
        "model_versions", sa.Column("dispatched_at", sa.DateTime(timezone=True), nullable=True)
    )
    op.add_column("model_versions", sa.Column("lease_owner", sa.String(length=255), nullable=True))
    op.add_column(
        "model_versions", sa.Column("lease_expires_at", sa.DateTime(timezone=True), nullable=True)
    )
    op.alter_column("model_versions", "task", existing_type=sa.String(length=40), nullable=True)
    op.alter_column("model_versions", "uri", existing_type=sa.String(length=1024), nullable=True)
    # The sweeper looks for validating versions on every pass; they are few at any time.
    op.create_index(
        "ix_model_versions_validating",
        "model_versions",
        ["created_at"],
        postgresql_where=sa.text("status = 'validating'"),
    )


def downgrade() -> None:
    op.drop_index("ix_model_versions_validating", table_name="model_versions")
    # Versions that never became ready have nothing to run: they cannot go back.
    op.execute("DELETE FROM model_versions WHERE status <> 'ready'")
    op.alter_column("model_versions", "uri", existing_type=sa.String(length=1024), nullable=False)
    op.alter_column("model_versions", "task", existing_type=sa.String(length=40), nullable=False)
    for column in (
        "lease_expires_at",
        "lease_owner",
        "dispatched_at",
        "attempts",
        "error",
        "status",
    ):
        op.drop_column("model_versions", column)
