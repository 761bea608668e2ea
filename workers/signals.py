"""Cross-cutting worker behaviour in one place (Celery signals), not in every task."""

from __future__ import annotations

import logging
import os
import threading
from collections.abc import Callable
from typing import Any, TypeVar

from celery.signals import worker_process_init, worker_ready, worker_shutdown

from app import db
from app.config import get_settings
from app.services import heartbeats
from app.unit_of_work import session_scope
from workers import state
from workers.runtime import configure_threads

log = logging.getLogger(__name__)

Handler = TypeVar("Handler", bound=Callable[..., None])


def _on(signal: Any) -> Callable[[Handler], Handler]:
    """`@signal.connect`, with its types (Celery has none): the handler is connected and stays
    the function it was."""
    connect: Callable[[Handler], Handler] = signal.connect
    return connect


@_on(worker_process_init)
def _init_process(**_: object) -> None:
    """Runs in each pool child after the fork: fresh DB engine, threads, device, models."""
    settings = get_settings()
    db.reset_engine(close=False, pre_ping=False)  # every write here runs under db_retry
    configure_threads(settings.torch_threads())
    process = state.current()
    for name in filter(None, (n.strip() for n in settings.preload_models.split(","))):
        try:
            process.cache.get(process.builtin(name))
        except Exception:  # a model that will not load fails its jobs, not the worker
            log.exception("could not preload model %s", name)
    log.info(  # the words scripts wait for (bench/scale.py): kept, though it is a pool process
        "worker process ready: pool=%s device=%s backend=%s threads=%d",
        process.pool,
        process.device,
        process.backend,
        settings.torch_threads(),
    )


_beating = threading.Event()  # set: stop beating


@_on(worker_ready)
def _start_heartbeat(sender: Any = None, **_: object) -> None:
    """Beat a row every few seconds, so `device: auto` knows whether a GPU pool is up."""
    name = str(getattr(sender, "hostname", None) or "unknown")
    # Read from settings, not from torch: this is the pool's parent process, and asking CUDA
    # anything here would break CUDA in the children it forks later.
    pool = os.environ.get("MODELFARM_WORKER_POOL", "cpu")
    device = get_settings().device_override or ("cuda" if pool == "gpu" else "cpu")
    # The pool's process count, as Celery started it: the scheduler sizes a pool's window by it.
    processes = getattr(getattr(sender, "controller", None), "concurrency", None)
    processes = processes if isinstance(processes, int) else None

    def beat() -> None:
        while True:
            try:
                with session_scope() as session:
                    heartbeats.beat(session, name, pool, device, processes)
            except Exception:  # the database may be away: beat again next time
                log.warning("heartbeat failed", exc_info=True)
            if _beating.wait(heartbeats.HEARTBEAT_SECONDS):
                return

    threading.Thread(target=beat, name="heartbeat", daemon=True).start()


@_on(worker_shutdown)
def _stop_heartbeat(sender: Any = None, **_: object) -> None:
    _beating.set()
    try:
        with session_scope() as session:
            heartbeats.forget(session, str(getattr(sender, "hostname", None) or "unknown"))
    except Exception:
        log.warning("could not remove the heartbeat row", exc_info=True)
