"""Rows for several tables written by one INSERT statement: one round trip, atomic on its own.

A batch of submissions is a file, a job and two events per job. Written as a transaction of
Core statements it cost six round trips (BEGIN, an INSERT per table, COMMIT, and the pool's
ping) and as many passes through SQLAlchemy's and psycopg's Python; on a busy machine every
round trip also waits for PostgreSQL's process to be scheduled. Here it is one statement:

    WITH t0 AS (INSERT INTO files (...) SELECT * FROM unnest($1::varchar(40)[], ...)),
         t1 AS (INSERT INTO jobs (...) SELECT * FROM unnest(...))
    INSERT INTO job_events (...) SELECT * FROM unnest(...)

with a column's values as one array parameter, so the text depends only on which tables and
columns there are (it is built once, and psycopg prepares it). Run in autocommit, the statement
is its own transaction: every row or none. Foreign keys between the tables hold, as PostgreSQL
checks them at the end of the statement.
"""

from __future__ import annotations

from collections.abc import Sequence
from functools import lru_cache
from typing import Any

from psycopg.types.json import Jsonb
from sqlalchemy import JSON, Connection, Table
from sqlalchemy.dialects import postgresql

from app.db import Base

_DIALECT = postgresql.dialect()  # type: ignore[no-untyped-call]

Rows = Sequence[tuple[Table, Sequence[dict[str, Any]]]]


def uniform(tables: Rows) -> bool:
    """Whether every row of each table sets the same columns, in the same order (what one
    statement needs: a column left to its default in one row is not in the others)."""
    return all(len({tuple(row) for row in rows}) <= 1 for _, rows in tables)


def insert_all(connection: Connection, tables: Rows) -> None:
    """INSERT every table's rows, in the order given (parents first), as one statement.

    `connection` must be in autocommit: inside a transaction the statement is atomic all the
    same, but BEGIN and COMMIT would cost their round trips again."""
    present = [(table, rows) for table, rows in tables if rows]
    if not present:
        return
    assert uniform(present), "rows of one table set different columns"
    shape = tuple((table.name, tuple(rows[0])) for table, rows in present)
    params: dict[str, list[Any]] = {}
    for i, (table, rows) in enumerate(present):
        for column in rows[0]:
            wrap = _json_wrapper(table, column)
            values = [row[column] for row in rows]
            params[f"t{i}_{column}"] = [wrap(v) for v in values] if wrap else values
    connection.exec_driver_sql(_statement(shape), params)


@lru_cache(maxsize=64)
def _statement(shape: tuple[tuple[str, tuple[str, ...]], ...]) -> str:
    quote = _DIALECT.identifier_preparer.quote
    inserts = []
    for i, (name, columns) in enumerate(shape):
        table = Base.metadata.tables[name]
        arrays = ", ".join(
            f"%(t{i}_{c})s::{table.c[c].type.compile(dialect=_DIALECT)}[]" for c in columns
        )
        names = ", ".join(quote(c) for c in columns)
        inserts.append(f"INSERT INTO {quote(name)} ({names}) SELECT * FROM unnest({arrays})")
    *ctes, last = inserts
    if not ctes:
        return last
    return "WITH " + ", ".join(f"t{i} AS ({sql})" for i, sql in enumerate(ctes)) + " " + last


@lru_cache(maxsize=256)
def _json_wrapper(table: Table, column: str) -> Any:
    """How a JSON column's value is passed (as SQLAlchemy's JSON type would store it: None is
    JSON null unless the type says none_as_null); None for any other column."""
    type_ = table.c[column].type
    if not isinstance(type_, JSON):
        return None
    if type_.none_as_null:
        return lambda value: None if value is None else Jsonb(value)
    return Jsonb
