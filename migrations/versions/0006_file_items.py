"""files know their item count when the farm wrote them (inline items, retry inputs, results)

Revision ID: 0006
Revises: 0005
Create Date: 2026-12-01 09:00:00.000000
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0006"
down_revision = "0005"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.add_column("files", sa.Column("items", sa.Integer(), nullable=True))


def downgrade() -> None:
    op.drop_column("files", "items")
