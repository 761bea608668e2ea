"""Which worker pools are alive: each worker beats a row, so routing can ask PostgreSQL."""

from __future__ import annotations

import time
from datetime import timedelta

from sqlalchemy import delete, func, select
from sqlalchemy.dialects.postgresql import insert
from sqlalchemy.orm import Session

from app.models import WorkerHeartbeat

HEARTBEAT_SECONDS = 5.0
ALIVE_SECONDS = 3 * HEARTBEAT_SECONDS  # three missed beats and a worker counts as gone


def beat(session: Session, name: str, pool: str, device: str, processes: int | None = None) -> None:
    now = func.statement_timestamp()  # compared with PostgreSQL's clock, on any host
    statement = insert(WorkerHeartbeat).values(
        name=name, pool=pool, device=device, processes=processes, started_at=now, seen_at=now
    )
    session.execute(
        statement.on_conflict_do_update(
            index_elements=[WorkerHeartbeat.name],
            set_={"pool": pool, "device": device, "processes": processes, "seen_at": now},
        )
    )


def forget(session: Session, name: str) -> None:
    session.execute(delete(WorkerHeartbeat).where(WorkerHeartbeat.name == name))


def pool_alive(session: Session, pool: str) -> bool:
    """Whether a worker of `pool` beat lately. Submission asks this for every job, so the API
    keeps the answer for a second (`ALIVE_SECONDS` already allows for seconds of slack)."""
    cached = _alive_cache.get(pool)
    if cached is not None and cached[0] > time.monotonic():
        return cached[1]
    alive = _pool_alive(session, pool)
    _alive_cache[pool] = (time.monotonic() + ALIVE_CACHE_SECONDS, alive)
    return alive


ALIVE_CACHE_SECONDS = 1.0
_alive_cache: dict[str, tuple[float, bool]] = {}


def _pool_alive(session: Session, pool: str) -> bool:
    since = func.statement_timestamp() - timedelta(seconds=ALIVE_SECONDS)
    count = session.scalar(
        select(func.count()).where(WorkerHeartbeat.pool == pool, WorkerHeartbeat.seen_at > since)
    )
    return bool(count)
