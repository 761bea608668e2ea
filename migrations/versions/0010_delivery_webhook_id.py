"""deliveries.msg_id is called what the API and the header call it: webhook_id

Revision ID: 0010
Revises: 0009
Create Date: 2026-12-01 09:55:00.000000
"""

from __future__ import annotations

from alembic import op

revision = "0010"
down_revision = "0009"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.alter_column("deliveries", "msg_id", new_column_name="webhook_id")
    op.execute(
        "ALTER TABLE deliveries RENAME CONSTRAINT uq_deliveries_msg_id TO uq_deliveries_webhook_id"
    )


def downgrade() -> None:
    op.execute(
        "ALTER TABLE deliveries RENAME CONSTRAINT uq_deliveries_webhook_id TO uq_deliveries_msg_id"
    )
    op.alter_column("deliveries", "webhook_id", new_column_name="msg_id")
