"""Cross-cutting worker behaviour in one place (Celery signals), not in every task."""

from __future__ import annotations

import logging

from celery.signals import worker_process_init

from app import db
from app.config import get_settings
from workers import state
from workers.runtime import builtin_spec, configure_threads

log = logging.getLogger(__name__)


@worker_process_init.connect
def _init_process(**_: object) -> None:
    """Runs in each pool child after the fork: fresh DB engine, threads, device, models."""
    settings = get_settings()
    db.reset_engine()
    configure_threads(settings.torch_threads())
    worker = state.current()
    for name in filter(None, (n.strip() for n in settings.preload_models.split(","))):
        try:
            worker.cache.get(builtin_spec(name, device=worker.device))
        except Exception:  # a model that will not load fails its jobs, not the worker
            log.exception("could not preload model %s", name)
    log.info(
        "worker process ready: pool=%s device=%s threads=%d",
        worker.pool,
        worker.device,
        settings.torch_threads(),
    )
