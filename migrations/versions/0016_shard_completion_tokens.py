"""job_shards.completion_tokens: the tokens a text-generation shard wrote, apart from those read

`job_shards.tokens` (0013) now holds what a shard's model read (for text generation: the
prompts); what it generated is counted here, so a job's usage, GET /v1/usage, an OpenAI batch's
usage and /metrics tell prompt and completion tokens apart. Shards closed before this keep 0.

Revision ID: 0016
Revises: 0015
Create Date: 2026-12-07 01:50:00.000000
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0016"
down_revision = "0015"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.add_column(
        "job_shards",
        sa.Column("completion_tokens", sa.BigInteger(), nullable=False, server_default="0"),
    )


def downgrade() -> None:
    op.drop_column("job_shards", "completion_tokens")
