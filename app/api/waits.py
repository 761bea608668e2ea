"""`Prefer: wait` woken by the job's end, not by polling.

`transition()` sends `NOTIFY modelfarm_job_ended, '<job id>'` in the transaction that ends a
job, so PostgreSQL delivers it exactly when that commit is visible. Each API process keeps one
connection listening on that channel (a daemon thread, started with the API) and wakes the
requests waiting for that job. A waiter still re-reads the job every SAFETY_POLL_SECONDS, so a
notification missed while the listener reconnects costs at most that long, never a hang.
"""

from __future__ import annotations

import asyncio
import logging
import os
import threading
import time
from collections import defaultdict
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from app.config import get_settings
from app.services.jobs import JOB_ENDED_CHANNEL

log = logging.getLogger(__name__)

SAFETY_POLL_SECONDS = 1.0

Waiter = tuple[asyncio.AbstractEventLoop, asyncio.Event]


class _Listener:
    def __init__(self) -> None:
        self._waiters: dict[str, set[Waiter]] = defaultdict(set)
        self._lock = threading.Lock()
        self._thread: threading.Thread | None = None

    def start(self) -> None:
        """Listen from now on (the API's startup): a first waiter that came before the LISTEN
        was in place would miss its job's end and wait for the safety poll."""
        with self._lock:
            self._start()

    def add(
        self, job_id: str, event: asyncio.Event
    ) -> tuple[asyncio.AbstractEventLoop, asyncio.Event]:
        waiter = (asyncio.get_running_loop(), event)
        with self._lock:
            self._waiters[job_id].add(waiter)
            self._start()  # again, if the thread died
        return waiter

    def _start(self) -> None:
        if self._thread is None or not self._thread.is_alive():
            self._thread = threading.Thread(target=self._listen, name="job-ends", daemon=True)
            self._thread.start()

    def remove(self, job_id: str, waiter: Waiter) -> None:
        with self._lock:
            waiters = self._waiters.get(job_id)
            if waiters is not None:
                waiters.discard(waiter)
                if not waiters:
                    del self._waiters[job_id]

    def _wake(self, job_id: str) -> None:
        with self._lock:
            waiters = list(self._waiters.get(job_id, ()))
        for loop, event in waiters:
            loop.call_soon_threadsafe(event.set)

    def _listen(self) -> None:
        import psycopg

        url = (
            get_settings().require_database_url().replace("postgresql+psycopg://", "postgresql://")
        )
        backoff = 0.5
        while True:
            try:
                # Named, so that pg_stat_activity says whose LISTEN it is.
                name = f"modelfarm job-ends {os.getpid()}"
                with psycopg.connect(url, autocommit=True, application_name=name) as conn:
                    conn.execute(f"LISTEN {JOB_ENDED_CHANNEL}")
                    backoff = 0.5
                    while True:
                        for note in conn.notifies(timeout=5.0):
                            self._wake(note.payload)
            except psycopg.OperationalError as exc:  # the database is away: the safety poll
                log.warning("job-end listener has no connection (%s); retrying", exc)
            except Exception:
                log.warning("job-end listener failed; retrying", exc_info=True)
            time.sleep(backoff)  # only an error leaves the loop above
            backoff = min(backoff * 2, 10.0)


_listener = _Listener()


def start_listening() -> None:
    """At the API's startup, where it has a database."""
    if get_settings().database_url:
        _listener.start()


@asynccontextmanager
async def job_end(job_id: str) -> AsyncIterator[asyncio.Event]:
    """An event set when the job may have ended; register before reading the job's status,
    so an end between the read and the wait is not missed."""
    event = asyncio.Event()
    waiter = _listener.add(job_id, event)
    try:
        yield event
    finally:
        _listener.remove(job_id, waiter)


async def until(event: asyncio.Event, deadline: float) -> None:
    """Wait for the event, the safety poll, or the deadline, whichever comes first."""
    timeout = min(SAFETY_POLL_SECONDS, max(0.0, deadline - time.monotonic()))
    try:
        await asyncio.wait_for(event.wait(), timeout)
    except TimeoutError:
        pass
    event.clear()
