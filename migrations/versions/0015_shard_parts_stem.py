"""job_shards.parts_stem: how the winning attempt's part files are named

A shard claim now commits without waiting for its WAL (`db.skip_commit_wait`), so a claim lost
in a database crash can be made again with the same attempt number while the first worker is
still writing. Part files are therefore named with the claim's owner too, and the name is
recorded here for the assembly. Shards closed before this keep NULL (named `<index>-<attempt>`).

Revision ID: 0015
Revises: 0013
Create Date: 2026-12-01 12:10:00.000000
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0015"
down_revision = "0013"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.add_column("job_shards", sa.Column("parts_stem", sa.String(64), nullable=True))


def downgrade() -> None:
    op.drop_column("job_shards", "parts_stem")
