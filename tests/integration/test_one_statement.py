"""A batch of submissions written as one statement (app/services/one_statement.py): the rows
are what the Core INSERTs wrote, and a refused row keeps nothing of its batch."""

from __future__ import annotations

from typing import Any

import pytest
from sqlalchemy import text
from sqlalchemy.exc import IntegrityError

pytestmark = pytest.mark.integration


def _prepared(tenant_key: str, count: int, **extra: Any) -> list[Any]:
    from app.models import Tenant
    from app.schemas.jobs import JobCreate
    from app.services.jobs import prepare_submission
    from app.services.tenants import authenticate
    from app.unit_of_work import session_scope

    with session_scope() as session:
        tenant = authenticate(session, tenant_key)
        assert isinstance(tenant, Tenant)
    out = []
    for i in range(count):
        body = JobCreate.model_validate(
            {"model": "minilm", "device": "cpu", "input": {"items": [{"input": f"s{i}"}]}, **extra}
        )
        with session_scope() as session:
            out.append(prepare_submission(session, tenant, body))
    return out


def _job_rows(job_ids: list[str]) -> list[dict[str, Any]]:
    from app.unit_of_work import session_scope

    with session_scope() as session:
        rows = session.execute(
            text(
                "SELECT j.id, j.status, j.queue, j.priority, j.params, j.metadata, j.usage,"
                " jsonb_typeof(j.webhook) AS webhook, j.result IS NULL AS no_result,"
                " j.dispatched_at IS NOT NULL AS dispatched, f.items, f.bytes,"
                " (SELECT array_agg(e.type ORDER BY e.id) FROM job_events e"
                "  WHERE e.job_id = j.id) AS events"
                " FROM jobs j JOIN files f ON f.id = j.input_file_id WHERE j.id = ANY(:ids)"
                " ORDER BY j.id"
            ),
            {"ids": job_ids},
        ).mappings()
        return [{k: v for k, v in row.items() if k != "id"} for row in rows]


def test_one_statement_writes_what_the_core_inserts_write(
    services: dict[str, str], tenant_key: str
) -> None:
    from app.db import HeldConnection
    from app.services import one_statement
    from app.services.jobs import insert_submissions, submission_rows
    from app.unit_of_work import session_scope

    by_statement = _prepared(tenant_key, 3, webhook=None, metadata={"k": "v"})
    by_core = _prepared(tenant_key, 3, webhook=None, metadata={"k": "v"})
    tables = submission_rows(by_statement)
    assert one_statement.uniform(tables)
    held = HeldConnection()
    with held.use() as connection:
        one_statement.insert_all(connection, tables)
    with session_scope() as session:
        insert_submissions(session, by_core)

    written = _job_rows([s.job.id for s in by_statement])
    expected = _job_rows([s.job.id for s in by_core])
    assert len(written) == 3 and written == expected
    first = written[0]
    assert first["status"] == "queued" and first["dispatched"] and first["no_result"]
    assert first["webhook"] == "null"  # None in a JSON column is JSON null, as SQLAlchemy writes it
    assert first["metadata"] == {"k": "v"} and first["items"] == 1
    assert first["events"] == ["queued", "dispatched"]


def test_a_refused_row_keeps_nothing_of_its_statement(
    services: dict[str, str], tenant_key: str
) -> None:
    from app.db import HeldConnection
    from app.models import File
    from app.services import one_statement
    from app.services.jobs import submission_rows

    good, bad = _prepared(tenant_key, 2)
    # The second job names an input file that is not there (its own File row is dropped).
    bad.rows[:] = [
        (cls, {**row, "input_file_id": "file_missing"} if "input_file_id" in row else row)
        for cls, row in bad.rows
        if cls is not File
    ]
    held = HeldConnection()
    with pytest.raises(IntegrityError), held.use() as connection:
        one_statement.insert_all(connection, submission_rows([good, bad]))
    assert _job_rows([good.job.id, bad.job.id]) == []
    # The connection is still good for the next batch, which lands.
    with held.use() as connection:
        one_statement.insert_all(connection, submission_rows([good]))
    assert len(_job_rows([good.job.id])) == 1


def test_rows_that_set_different_columns_are_not_one_statement() -> None:
    from app.models import Job
    from app.services import one_statement

    table: Any = Job.__table__
    assert one_statement.uniform(
        [(table, [{"id": "a", "status": "x"}, {"id": "b", "status": "y"}])]
    )
    assert not one_statement.uniform([(table, [{"id": "a", "status": "x"}, {"id": "b"}])])
