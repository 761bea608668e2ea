"""Engine, sessions and the declarative Base shared by the API, the workers and Alembic."""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime, timedelta

from sqlalchemy import JSON, Connection, MetaData, create_engine, text
from sqlalchemy.dialects.postgresql import JSONB
from sqlalchemy.engine import Engine
from sqlalchemy.orm import DeclarativeBase, Session, sessionmaker

from app.config import get_settings

log = logging.getLogger(__name__)

# Stable constraint names from the first migration on, so autogenerate never churns them.
NAMING_CONVENTION = {
    "ix": "ix_%(table_name)s_%(column_0_N_name)s",
    "uq": "uq_%(table_name)s_%(column_0_N_name)s",
    "ck": "ck_%(table_name)s_%(constraint_name)s",
    "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
    "pk": "pk_%(table_name)s",
}

JSONType = JSON().with_variant(JSONB(), "postgresql")


class Base(DeclarativeBase):
    metadata = MetaData(naming_convention=NAMING_CONVENTION)


def utcnow() -> datetime:
    """This host's clock: for what only this process reads (a log line, a duration). What
    another host compares (a lease, a deadline, a dispatch time) takes `database_clock()` or
    PostgreSQL's `statement_timestamp()` in the statement itself."""
    return datetime.now(UTC)


#: (PostgreSQL's clock, this process's monotonic clock) when last read: `database_clock`
_db_clock: tuple[datetime, float] | None = None
DB_CLOCK_SECONDS = 30.0  #: how long one reading of PostgreSQL's clock is used


def database_clock() -> datetime:
    """PostgreSQL's clock, for a timestamp a process writes as a value (a group commit's rows
    are arrays of values, not statements): read from the database at most every
    DB_CLOCK_SECONDS and carried forward on this process's monotonic clock, so a host whose
    wall clock is minutes off (or stepped meanwhile) writes the database's time all the same,
    to within a round trip."""
    global _db_clock
    reading = _db_clock
    if reading is None or time.monotonic() - reading[1] > DB_CLOCK_SECONDS:
        with get_engine().connect() as connection:
            before = time.monotonic()
            now = connection.execute(text("SELECT statement_timestamp()")).scalar_one()
            reading = _db_clock = (now, (before + time.monotonic()) / 2)
    return reading[0] + timedelta(seconds=time.monotonic() - reading[1])


def sqlalchemy_url(url: str) -> str:
    """Accept the plain ``postgresql://`` form too and pick the psycopg 3 driver."""
    for prefix in ("postgresql://", "postgres://"):
        if url.startswith(prefix):
            return "postgresql+psycopg://" + url[len(prefix) :]
    return url


_engine: Engine | None = None
_engine_pid: int | None = None
_sessionmaker: sessionmaker[Session] | None = None
_read_sessionmaker: sessionmaker[Session] | None = None
# Test each pooled connection before lending it. The API keeps this: after a PostgreSQL restart
# a stale connection would otherwise fail the request it serves. Worker processes turn it off
# (`reset_engine(pre_ping=False)`): each of their writes runs under db_retry, which takes a fresh
# connection after a lost one, so a ping per transaction would only add a round trip.
_pre_ping = True


def get_engine() -> Engine:
    """One engine per process; a forked child gets its own (pooled sockets do not survive)."""
    global _engine, _engine_pid, _sessionmaker, _read_sessionmaker
    if _engine is None or _engine_pid != os.getpid():
        if _engine is not None:
            _engine.dispose(close=False)
        settings = get_settings()
        url = sqlalchemy_url(settings.require_database_url())
        # As many connections as the API has request threads: a request never waits for one,
        # and none is opened and closed per request (an overflow connection is, in SQLAlchemy).
        # Pools fill on demand, so a worker process still opens only the few it uses.
        _engine = create_engine(
            url, pool_pre_ping=_pre_ping, pool_size=settings.api_threads, max_overflow=4
        )
        _engine_pid = os.getpid()
        _sessionmaker = sessionmaker(_engine, expire_on_commit=False)
        _read_sessionmaker = sessionmaker(
            _engine.execution_options(isolation_level="AUTOCOMMIT"),
            expire_on_commit=False,
            autoflush=False,
        )
    return _engine


def reset_engine(close: bool = True, pre_ping: bool | None = None) -> None:
    """Forget the engine. In a forked child pass close=False: the pooled connections belong to
    the parent, which is still using them. `pre_ping` sets whether the next engine pings."""
    global _engine, _sessionmaker, _read_sessionmaker, _pre_ping, _db_clock
    _db_clock = None
    if pre_ping is not None:
        _pre_ping = pre_ping
    if _engine is not None:
        _engine.dispose(close=close)
    _engine = None
    _sessionmaker = None
    _read_sessionmaker = None


def get_sessionmaker() -> sessionmaker[Session]:
    get_engine()
    assert _sessionmaker is not None
    return _sessionmaker


@contextmanager
def read_scope() -> Iterator[Session]:
    """A session for reads only, in autocommit: no BEGIN and COMMIT round trips around a
    single SELECT (a `Prefer: wait` answer reads its job twice). Nothing it adds is written."""
    get_engine()
    assert _read_sessionmaker is not None
    session = _read_sessionmaker()
    try:
        yield session
    finally:
        session.close()


class HeldConnection:
    """A connection in autocommit, kept from one use to the next: each group commit thread of
    the API keeps one (app/api/submissions.py), a batch being one statement, its own
    transaction (app/services/one_statement.py).

    Taken from the pool for every batch, it was pinged every time (the API's engine pings at
    checkout, so a restarted PostgreSQL costs no request a 503): a round trip and a statement
    per batch. Kept, it is handed back and taken again (so pinged) only after IDLE_SECONDS
    unused; a connection lost under load fails the statement it was running (as a
    checkout-time ping could not have prevented either) and is replaced for the next.
    """

    IDLE_SECONDS = 1.0

    def __init__(self) -> None:
        self._connection: Connection | None = None
        self._used_at = 0.0

    @contextmanager
    def use(self) -> Iterator[Connection]:
        connection = self._connection
        stale = time.monotonic() - self._used_at > self.IDLE_SECONDS
        if connection is not None and (
            stale or connection.invalidated or connection.engine is not get_engine()
        ):
            self._release()
        if self._connection is None:
            self._connection = (
                get_engine().connect().execution_options(isolation_level="AUTOCOMMIT")
            )
        connection = self._connection
        try:
            yield connection
        except BaseException:
            if connection.invalidated or connection.closed:
                self._release()
            raise
        finally:
            self._used_at = time.monotonic()

    def _release(self) -> None:
        if self._connection is not None:
            try:
                self._connection.close()
            except Exception:  # already broken: the pool discards it
                log.debug("closing a held connection failed", exc_info=True)
            self._connection = None


def skip_commit_wait(session: Session) -> None:
    """Let this transaction's COMMIT return before its WAL is on disk (`synchronous_commit` off,
    for this transaction only). The commit is still atomic and in order; a database crash in the
    next fraction of a second may undo it. On this farm's disks a durable commit waits 2-4 ms
    for fdatasync, a one-item job's largest single cost after its model.

    Only for a claim: undone, its job or shard is back as it was before (queued, or running under
    a lease that lapses), its worker's later writes are refused for want of the lease, and the
    sweeper sends the work again. Never for a commit that someone is told of (a submission's 202,
    a job's end, a recorded result), and the worker's files must not depend on the claim being
    kept (part files carry the claim's owner: `shards.parts_stem`)."""
    session.execute(text("SET LOCAL synchronous_commit TO OFF"))


def database_reachable() -> bool:
    """Whether PostgreSQL answers a query now (for /readyz)."""
    try:
        with get_engine().connect() as connection:
            connection.execute(text("SELECT 1"))
        return True
    except Exception:
        return False


def is_lock_conflict(exc: BaseException) -> bool:
    """A deadlock or serialization failure: the transaction lost a race and may simply be run
    again (PostgreSQL chose it as the victim; nothing of it was kept)."""
    from psycopg import errors

    orig = getattr(exc, "orig", None)
    return isinstance(orig, errors.DeadlockDetected | errors.SerializationFailure)
