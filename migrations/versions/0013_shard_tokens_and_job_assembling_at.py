"""shards record the tokens their items used; jobs record when their assembly began

Revision ID: 0013
Revises: 0012
Create Date: 2026-12-01 12:00:00.000000
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0013"
down_revision = "0012"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.add_column(
        "job_shards", sa.Column("tokens", sa.BigInteger(), nullable=False, server_default="0")
    )
    op.add_column("jobs", sa.Column("assembling_at", sa.DateTime(timezone=True), nullable=True))


def downgrade() -> None:
    op.drop_column("jobs", "assembling_at")
    op.drop_column("job_shards", "tokens")
