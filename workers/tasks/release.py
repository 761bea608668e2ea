"""Filling a pool's window: the shards the scheduler lets through. Called when a job is
planned, when a shard ends (its place in the window is free) and when lost results are run
again (workers/tasks/inference.py, workers/tasks/assemble.py)."""

from __future__ import annotations

from app.config import get_settings
from app.services import scheduler
from app.unit_of_work import session_scope
from workers.reliability import db_retry


def release_shards(queue: str) -> None:
    """Fill the pool's window (fair share, app/services/scheduler.py) in a transaction of its
    own; its unit of work sends what it released; a lost message is sent again by the sweeper."""
    settings = get_settings()

    def take() -> None:
        with session_scope() as session:
            window = scheduler.window_size(
                session, queue, settings.scheduler_window, settings.processes_per_worker(queue)
            )
            scheduler.release(session, queue, window)

    db_retry(take)
