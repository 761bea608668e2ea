"""deliveries.attempts is called what it is, a count: attempt_count

The API's `attempts` of a delivery is the list of its attempts (the `delivery_attempts` rows),
and the ORM's relationship is named so too; the count beside `max_attempts` says it counts.

Revision ID: 0011
Revises: 0010
Create Date: 2026-12-01 12:00:00.000000
"""

from __future__ import annotations

from alembic import op

revision = "0011"
down_revision = "0010"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.alter_column("deliveries", "attempts", new_column_name="attempt_count")


def downgrade() -> None:
    op.alter_column("deliveries", "attempt_count", new_column_name="attempts")
