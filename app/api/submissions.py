"""Group commit: submissions that arrive together are written in one transaction.

`POST /v1/jobs` hands its parsed request to the committer threads of its API process (two,
COMMITTERS) and waits on its event loop. A committer takes every submission waiting at that
moment, runs each one's checks and reads (`jobs.prepare_submission`, which also writes an inline
input's file), writes all their rows with one statement (app/services/one_statement.py),
publishes their plan messages in one Redis round trip (`unit_of_work.deliver`), and only then
lets each request answer 202. Under load the next batch gathers while one is written, so a
commit and its round trips are shared by many jobs; a lone request waits for nothing but its
own commit. The request itself never leaves its event loop: a hop to a worker thread and back
(the GIL handed over twice) had cost it more CPU than FastAPI. Other callers (the OpenAI
surface) prepare in their own thread and hand over the rows with `submit`.

Every guarantee of a single submission holds: the answer comes after the commit (a job id a
client holds exists), publishing comes after the commit (a message never names a missing job),
and a refused message takes its dispatch mark back for the sweeper. A batch that PostgreSQL
refuses is written again one submission at a time, so one bad row fails only its own request.
Submissions with an `Idempotency-Key` keep their own transaction (their race is decided by the
unique index, one job at a time).
"""

from __future__ import annotations

import asyncio
import logging
import queue
import threading
from collections.abc import Callable
from dataclasses import dataclass

from sqlalchemy.exc import DataError, IntegrityError, SQLAlchemyError
from sqlalchemy.orm import Session

from app.db import HeldConnection, read_scope
from app.models import Job
from app.services import jobs as job_service
from app.services import one_statement
from app.services.tenants import count_prepared
from app.unit_of_work import deliver, rollback, session_scope

log = logging.getLogger(__name__)

MAX_BATCH = 256  #: submissions written by one transaction at most
# Committer threads per API process. With one, a process had a single transaction in flight:
# on a busy machine, where every round trip also waits for PostgreSQL's process to be scheduled,
# it sat idle between round trips with requests waiting. With two, one batch is written while
# the next gathers and starts on the other; more split the requests in flight (a few per
# process) into batches of one, and each thread's wake-ups cost CPU of their own.
COMMITTERS = 2

Prepare = Callable[[Session], job_service.Submission]


@dataclass(eq=False)
class Waiting:
    submission: job_service.Submission | None
    prepare: Prepare | None = None  # run by the committer first, with a session for reads
    error: BaseException | None = None
    done: threading.Event | None = None  # a thread waits on this, or
    future: asyncio.Future[None] | None = None  # a request on its event loop awaits this


class GroupCommit:
    def __init__(self) -> None:
        self._queue: queue.SimpleQueue[Waiting] = queue.SimpleQueue()
        self._lock = threading.Lock()
        self._threads: list[threading.Thread] = []

    def submit(self, submission: job_service.Submission) -> None:
        """Write and publish one submission; returns once it is committed (raises what the
        database raised when it could not be)."""
        waiting = Waiting(submission, done=threading.Event())
        self._start()
        self._queue.put(waiting)
        assert waiting.done is not None
        waiting.done.wait()
        if waiting.error is not None:
            raise waiting.error

    async def submit_async(self, prepare: Prepare) -> job_service.Submission:
        """Prepare (`prepare(session)`: its checks and reads), write and publish one
        submission, all in the committer thread; returns once it is committed.

        From an event loop, with no hop to a worker thread: that hop (and the GIL passed back
        and forth for it) cost a request more CPU than FastAPI itself. What `prepare` raises
        is raised here, as is what the database raised when the rows could not be written.
        """
        waiting = Waiting(None, prepare, future=asyncio.get_running_loop().create_future())
        self._start()
        self._queue.put(waiting)
        assert waiting.future is not None
        await waiting.future
        if waiting.error is not None:
            raise waiting.error
        assert waiting.submission is not None
        return waiting.submission

    def _start(self) -> None:
        if len(self._threads) == COMMITTERS and all(t.is_alive() for t in self._threads):
            return
        with self._lock:
            self._threads = [t for t in self._threads if t.is_alive()]
            while len(self._threads) < COMMITTERS:
                name = f"group-commit-{len(self._threads)}"
                thread = threading.Thread(target=self._run, name=name, daemon=True)
                thread.start()
                self._threads.append(thread)

    def _run(self) -> None:
        while True:
            batch = [self._queue.get()]
            while len(batch) < MAX_BATCH:
                try:
                    batch.append(self._queue.get_nowait())
                except queue.Empty:
                    break
            commit_batch(batch)


def commit_batch(batch: list[Waiting]) -> None:
    """Prepare, write and publish one batch, then wake its requests. The quota of each
    submission counts those of the batch prepared before it (`tenants.count_prepared`)."""
    try:
        _prepare(batch)
        ready = [w for w in batch if w.error is None and w.submission is not None]
        outcomes = write_batch([w.submission for w in ready if w.submission is not None])
        for waiting, error in zip(ready, outcomes, strict=True):
            waiting.error = error
    except BaseException as exc:  # noqa: BLE001 - handed to every request of the batch
        for waiting in batch:
            waiting.error = waiting.error or exc
    _wake(batch)


def _prepare(batch: list[Waiting]) -> None:
    """Run the submissions' own checks and reads, all on one session (and one connection)."""
    pending = [w for w in batch if w.prepare is not None]
    if not pending:
        return
    with read_scope() as session:
        for waiting in pending:
            assert waiting.prepare is not None
            try:
                waiting.submission = waiting.prepare(session)
                # The next submissions of this batch count it against their tenant's quota.
                count_prepared(session, waiting.submission.job.tenant_id)
            except Exception as exc:  # its own answer (404, 422, 429...), the others go on
                waiting.error = exc
                if isinstance(exc, SQLAlchemyError):
                    rollback(session)


def _wake(batch: list[Waiting]) -> None:
    """Tell every waiting request: threads at once, and each event loop once for all its own."""
    by_loop: dict[asyncio.AbstractEventLoop, list[asyncio.Future[None]]] = {}
    for waiting in batch:
        if waiting.done is not None:
            waiting.done.set()
        if waiting.future is not None:
            by_loop.setdefault(waiting.future.get_loop(), []).append(waiting.future)
    for loop, futures in by_loop.items():
        try:
            loop.call_soon_threadsafe(_resolve, futures)
        except RuntimeError:  # that loop is closed: nobody is waiting any more
            pass


def _resolve(futures: list[asyncio.Future[None]]) -> None:
    for future in futures:
        if not future.done():  # a request cancelled meanwhile (its client went away)
            future.set_result(None)


def write_batch(submissions: list[job_service.Submission]) -> list[BaseException | None]:
    """Commit submissions together, then publish them; what each one met (None: written).

    Raises what the database raised when it could write none of them (it is down, say).
    """
    outcomes: list[BaseException | None] = [None] * len(submissions)
    if not submissions:
        return outcomes
    try:
        _commit(submissions)
    except (IntegrityError, DataError):
        if len(submissions) == 1:
            raise
        # One row the database refuses (a file deleted meanwhile, say) fails its own request
        # only: the others are written again, each on its own.
        for i, submission in enumerate(submissions):
            try:
                _commit([submission])
            except (IntegrityError, DataError) as exc:
                outcomes[i] = exc
    _publish([s.job for s, error in zip(submissions, outcomes, strict=True) if error is None])
    return outcomes


def _commit(submissions: list[job_service.Submission]) -> None:
    tables = job_service.submission_rows(submissions)
    if not one_statement.uniform(tables):  # a row left to a default: one INSERT per shape
        with session_scope() as session:
            job_service.insert_submissions(session, submissions)
        return
    held = getattr(_held, "connection", None)
    if held is None:
        held = _held.connection = HeldConnection()
    with held.use() as connection:
        one_statement.insert_all(connection, tables)


# Each committer keeps its own connection between batches (app/db.py says why).
_held = threading.local()


def _publish(jobs: list[Job]) -> None:
    """The batch's plan messages, in one round trip; a refused one's dispatch mark is taken
    back (app/unit_of_work.py)."""
    deliver([job_service.plan_message(job) for job in jobs])


group_commit = GroupCommit()
