"""Keeping hold of work: database writes that outlast a PostgreSQL restart, and lease renewal."""

from __future__ import annotations

import logging
import os
import secrets
import socket
import threading
import time
from collections.abc import Callable
from typing import Self, TypeVar

import psutil
from sqlalchemy.exc import DBAPIError, OperationalError
from sqlalchemy.exc import TimeoutError as PoolTimeout
from sqlalchemy.orm import Session

from app.config import get_settings
from app.services.shards import job_should_stop, renew_job_lease, renew_shard_lease
from app.unit_of_work import session_scope

log = logging.getLogger(__name__)
T = TypeVar("T")
HOST = socket.gethostname()


def new_owner() -> str:
    """A lease owner: host and pid say who, the random part tells two attempts apart."""
    return f"{HOST}:{os.getpid()}:{secrets.token_hex(4)}"


def worker_owner() -> str:
    """A lease owner that also names this pool child's worker (its parent process, with the
    time it started, so a restarted worker that got the same pid is told apart): the next
    attempt can then tell a child killed under a living worker (the OOM killer, a hard time
    limit: the work's own doing) from a worker that stopped or restarted (`worker_is_gone`)."""
    parent = os.getppid()
    try:
        started = psutil.Process(parent).create_time()
    except psutil.Error:
        started = 0.0
    return f"{new_owner()}/{parent}@{started:.2f}"


def worker_is_gone(owner: str | None) -> bool:
    """True when `owner` (from `worker_owner`) ran on this host and its worker process is gone,
    or is another process now under the same pid."""
    if not owner or owner.partition(":")[0] != HOST:
        return False
    _, slash, worker = owner.rpartition("/")
    pid, at, started = worker.partition("@")
    if not slash or not at or not pid.isdigit():
        return False
    try:
        created = float(psutil.Process(int(pid)).create_time())
        return abs(created - float(started)) > 0.5
    except (psutil.Error, ValueError):
        return True


def owner_is_dead(owner: str | None) -> bool:
    """True only when the owner ran on this host and its process is gone (a killed child)."""
    if not owner:
        return False
    host, _, rest = owner.partition(":")
    pid = rest.partition(":")[0]
    return host == HOST and pid.isdigit() and not psutil.pid_exists(int(pid))


def _retryable(exc: BaseException) -> bool:
    if isinstance(exc, OperationalError | PoolTimeout):
        return True
    return isinstance(exc, DBAPIError) and bool(exc.connection_invalidated)


def db_retry(fn: Callable[..., T], *args: object, **kwargs: object) -> T:
    """Run a whole unit of work (its own transaction) again while the database is away.

    Each unit is a conditional update, so running it again after a lost connection is safe.
    """
    deadline = time.monotonic() + get_settings().db_retry_seconds
    delay = 0.25
    while True:
        try:
            return fn(*args, **kwargs)
        except Exception as exc:
            if not _retryable(exc) or time.monotonic() > deadline:
                raise
            log.warning("database unavailable (%s); retrying in %.1fs", type(exc).__name__, delay)
            time.sleep(delay)
            delay = min(delay * 2, 5.0)


class ShardWatch:
    """A thread beside a running shard: renews its lease and watches its job.

    `lost`: the lease could not be renewed (the sweeper gave the shard to another attempt).
    `stop_wanted`: the job is no longer running (cancel, deadline, failed) or is past its
    deadline. The runner asks `should_stop` between micro-batches, so a cancel is seen within
    about WATCH_SECONDS plus one micro-batch, however large the chunk.
    """

    WATCH_SECONDS = 1.0

    def __init__(self, shard_id: int, job_id: str, owner: str, lease_seconds: float) -> None:
        self.shard_id, self.job_id, self.owner = shard_id, job_id, owner
        self.lease_seconds = lease_seconds
        self.lost = False
        self.stop_wanted = False
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="shard-watch", daemon=True)

    def should_stop(self) -> bool:
        return self.lost or self.stop_wanted

    def __enter__(self) -> Self:
        self._thread.start()
        return self

    def __exit__(self, *_: object) -> None:
        self._stop.set()
        self._thread.join(timeout=5)

    def _run(self) -> None:
        renew_every = max(self.WATCH_SECONDS, self.lease_seconds / 3)
        last_renewal = time.monotonic()
        while not self._stop.wait(self.WATCH_SECONDS):
            try:
                with session_scope() as session:
                    if time.monotonic() - last_renewal >= renew_every:
                        if not self._renew(session):
                            self.lost = True
                            return
                        last_renewal = time.monotonic()
                    self.stop_wanted = job_should_stop(session, self.job_id)
            except Exception:  # the database may be away; the next tick tries again
                log.warning("could not watch shard %s", self.shard_id, exc_info=True)

    def _renew(self, session: Session) -> bool:
        return renew_shard_lease(session, self.shard_id, self.owner, self.lease_seconds)


class JobWatch(ShardWatch):
    """The same watch for work that holds the job's own lease (a training run)."""

    def __init__(self, job_id: str, owner: str, lease_seconds: float) -> None:
        super().__init__(0, job_id, owner, lease_seconds)

    def _renew(self, session: Session) -> bool:
        return renew_job_lease(session, self.job_id, self.owner, self.lease_seconds)
