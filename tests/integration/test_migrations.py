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
    import subprocess
    import sys
    from contextlib import ExitStack

    from tests.farms import fresh_database

    script = (
        "from alembic import command\n"
        "from alembic.script import ScriptDirectory\n"
        "from app.local.migrate import alembic_config\n"
        "config = alembic_config()\n"
        "heads = ScriptDirectory.from_config(config).get_heads()\n"
        "assert len(heads) == 1, heads\n"
        "command.upgrade(config, 'head')\n"
        "command.downgrade(config, 'base')\n"
        "command.upgrade(config, 'head')\n"
    )
    with ExitStack() as stack:
        url = fresh_database(services["MODELFARM_DATABASE_URL"], stack, prefix="modelfarm_mig")
        env = {**os.environ, "MODELFARM_DATABASE_URL": url}
        done = subprocess.run(
            [sys.executable, "-c", script], env=env, capture_output=True, text=True, timeout=300
        )
    assert done.returncode == 0, done.stderr[-3000:]
