from __future__ import annotations

from datetime import datetime

from sqlalchemy import DateTime, Integer, String
from sqlalchemy.orm import Mapped, mapped_column

from app.db import Base, utcnow


class WorkerHeartbeat(Base):
    """A running worker says which pool it serves, every few seconds.

    `device: auto` goes to the GPU pool only while a GPU worker beats, and a `gpu` job with
    no GPU worker says so on the job instead of waiting silently.
    """

    __tablename__ = "worker_heartbeats"

    name: Mapped[str] = mapped_column(String(255), primary_key=True)  # Celery hostname
    pool: Mapped[str] = mapped_column(String(20), index=True)
    device: Mapped[str] = mapped_column(String(40))
    # Its pool processes: the scheduler's default window is twice their sum over the pool.
    processes: Mapped[int | None] = mapped_column(Integer)
    started_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)
    seen_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)
