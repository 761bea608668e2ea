"""The migrations build exactly the schema the ORM describes: no drift between the two."""

from __future__ import annotations

import pytest

pytestmark = pytest.mark.integration


def test_the_migrated_schema_is_the_orm_schema(services: dict[str, str]) -> None:
    from alembic.autogenerate import compare_metadata
    from alembic.migration import MigrationContext

    import app.models  # noqa: F401 - every table registered on the metadata
    from app.db import Base, get_engine

    with get_engine().connect() as conn:
        context = MigrationContext.configure(conn, opts={"compare_type": True})
        drift = compare_metadata(context, Base.metadata)
    assert drift == []


def test_every_migration_goes_down_and_up_again(services: dict[str, str]) -> None:
    """On a database of its own: up to the head, down to nothing, up again; one head."""
    import os
    import secrets
    import subprocess
    import sys

    import psycopg

    url = services["MODELFARM_DATABASE_URL"].replace("postgresql+psycopg://", "postgresql://")
    base, _, query = url.partition("?")
    name = f"modelfarm_migrations_{secrets.token_hex(4)}"
    server = base.rsplit("/", 1)[0]
    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{name}"')
    try:
        script = (
            "from alembic import command\n"
            "from alembic.script import ScriptDirectory\n"
            "from app.migrate import alembic_config\n"
            "config = alembic_config()\n"
            "heads = ScriptDirectory.from_config(config).get_heads()\n"
            "assert len(heads) == 1, heads\n"
            "command.upgrade(config, 'head')\n"
            "command.downgrade(config, 'base')\n"
            "command.upgrade(config, 'head')\n"
        )
        env = {
            **os.environ,
            "MODELFARM_DATABASE_URL": f"{server}/{name}" + (f"?{query}" if query else ""),
        }
        done = subprocess.run(
            [sys.executable, "-c", script], env=env, capture_output=True, text=True, timeout=300
        )
        assert done.returncode == 0, done.stderr[-3000:]
    finally:
        with psycopg.connect(url, autocommit=True) as conn:
            conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
