"""jobs held back by their tenant's max_running_jobs say since when (held_at)

Revision ID: 0012
Revises: 0011
Create Date: 2026-12-01 12:00:00.000000
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0012"
down_revision = "0011"
branch_labels = None
depends_on = None


def upgrade() -> None:
    # A queued job its planner held back (app/services/admission.py): it has no message in the
    # broker, and waits for a running job of its tenant to end, not for the sweeper's resend.
    op.add_column("jobs", sa.Column("held_at", sa.DateTime(timezone=True), nullable=True))


def downgrade() -> None:
    op.drop_column("jobs", "held_at")
