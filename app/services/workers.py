"""Which worker pools are alive: each worker beats a row, so routing can ask PostgreSQL."""

from __future__ import annotations

from datetime import timedelta

from sqlalchemy import delete, func, select
from sqlalchemy.dialects.postgresql import insert
from sqlalchemy.orm import Session

from app.db import utcnow
from app.models import WorkerHeartbeat

HEARTBEAT_SECONDS = 5.0
ALIVE_SECONDS = 3 * HEARTBEAT_SECONDS  # three missed beats and a worker counts as gone


def beat(session: Session, name: str, pool: str, device: str) -> None:
    now = utcnow()
    statement = insert(WorkerHeartbeat).values(
        name=name, pool=pool, device=device, started_at=now, seen_at=now
    )
    session.execute(
        statement.on_conflict_do_update(
            index_elements=[WorkerHeartbeat.name],
            set_={"pool": pool, "device": device, "seen_at": now},
        )
    )


def forget(session: Session, name: str) -> None:
    session.execute(delete(WorkerHeartbeat).where(WorkerHeartbeat.name == name))


def pool_alive(session: Session, pool: str) -> bool:
    since = utcnow() - timedelta(seconds=ALIVE_SECONDS)
    count = session.scalar(
        select(func.count()).where(WorkerHeartbeat.pool == pool, WorkerHeartbeat.seen_at > since)
    )
    return bool(count)
