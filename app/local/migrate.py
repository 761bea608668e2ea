"""Run Alembic from inside the package, wherever it is installed."""

from __future__ import annotations

from pathlib import Path

from alembic import command
from alembic.config import Config
from sqlalchemy import create_engine, pool, text

import migrations
from app.config import get_settings

# Held while one process migrates: every process of a Procfile may be told to migrate at
# start (`--migrate`), and they all start at once; the first does the work, the others wait
# for it and then find the schema at head.
MIGRATION_LOCK = 0x6D66_6D67  # "mfmg"


def alembic_config() -> Config:
    return Config(str(Path(migrations.__file__).parent / "alembic.ini"))


def upgrade(revision: str = "head") -> None:
    command.upgrade(alembic_config(), revision)


def upgrade_locked(revision: str = "head") -> None:
    """`upgrade` under a PostgreSQL advisory lock, so concurrent callers migrate once."""
    from app.db import sqlalchemy_url

    url = sqlalchemy_url(get_settings().require_database_url())
    engine = create_engine(url, poolclass=pool.NullPool)
    try:
        with engine.connect() as conn:
            # A session-level lock: it outlives the transaction the SELECT opens, and is
            # released when this connection closes, even if the upgrade fails.
            conn.execute(text("SELECT pg_advisory_lock(:k)"), {"k": MIGRATION_LOCK})
            conn.commit()
            upgrade(revision)
    finally:
        engine.dispose()
