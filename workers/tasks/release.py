"""Filling a pool's window: the shards the scheduler lets through, published. Called when a
job is planned, when a shard ends (its place in the window is free) and when lost results are
run again (workers/tasks/inference.py, workers/tasks/assemble.py)."""

from __future__ import annotations

from app.broker.dispatch import publish_shard
from app.config import get_settings
from app.db import session_scope
from app.services import scheduler
from workers.reliability import db_retry


def release_shards(queue: str) -> None:
    """Fill the pool's window (fair share, app/services/scheduler.py) in a transaction of its
    own, then publish what it released; a lost message is sent again by the sweeper."""
    settings = get_settings()

    def take() -> list[scheduler.Released]:
        with session_scope() as session:
            window = scheduler.window_size(
                session, queue, settings.scheduler_window, settings.processes_per_worker(queue)
            )
            return scheduler.release(session, queue, window)

    for job_id, index, priority in db_retry(take):
        publish_shard(job_id, index, queue, priority)
