"""Group commit: submissions that arrive together are written in one transaction.

A submission's own checks and reads run in its request thread (`jobs.prepare_submission`); its
rows then wait here for one committer thread per API process, which writes every submission
waiting at that moment with one INSERT per table and one COMMIT, publishes their messages, and
only then lets each request answer 202. Under load the next batch gathers while one commits, so
a commit, its round trips and its flush are shared by many jobs (they were half of what a
submission cost the API); a lone request waits for nothing but its own commit.

Every guarantee of a single submission holds: the answer comes after the commit (a job id a
client holds exists), publishing comes after the commit (a message never names a missing job),
and a refused message takes its dispatch mark back for the sweeper. A batch that PostgreSQL
refuses is written again one submission at a time, so one bad row fails only its own request.
Submissions with an `Idempotency-Key` keep their own transaction (their race is decided by the
unique index, one job at a time).
"""

from __future__ import annotations

import logging
import queue
import threading
from dataclasses import dataclass, field

from sqlalchemy.exc import DataError, IntegrityError

from app.db import session_scope
from app.dispatch import publish_job
from app.metrics import JOBS_SUBMITTED
from app.models import Job
from app.services import jobs as job_service

log = logging.getLogger(__name__)

MAX_BATCH = 256  #: submissions written by one transaction at most


@dataclass
class _Waiting:
    submission: job_service.Submission
    done: threading.Event = field(default_factory=threading.Event)
    error: BaseException | None = None


class GroupCommit:
    def __init__(self) -> None:
        self._queue: queue.SimpleQueue[_Waiting] = queue.SimpleQueue()
        self._lock = threading.Lock()
        self._thread: threading.Thread | None = None

    def submit(self, submission: job_service.Submission) -> None:
        """Write and publish one submission; returns once it is committed (raises what the
        database raised when it could not be)."""
        waiting = _Waiting(submission)
        self._start()
        self._queue.put(waiting)
        waiting.done.wait()
        if waiting.error is not None:
            raise waiting.error

    def _start(self) -> None:
        with self._lock:
            if self._thread is None or not self._thread.is_alive():
                self._thread = threading.Thread(target=self._run, name="group-commit", daemon=True)
                self._thread.start()

    def _run(self) -> None:
        while True:
            batch = [self._queue.get()]
            while len(batch) < MAX_BATCH:
                try:
                    batch.append(self._queue.get_nowait())
                except queue.Empty:
                    break
            try:
                outcomes = write_batch([w.submission for w in batch])
            except BaseException as exc:  # noqa: BLE001 - handed to every request of the batch
                outcomes = [exc] * len(batch)
            for waiting, error in zip(batch, outcomes, strict=True):
                waiting.error = error
                waiting.done.set()


def write_batch(submissions: list[job_service.Submission]) -> list[BaseException | None]:
    """Commit submissions together, then publish them; what each one met (None: written).

    Raises what the database raised when it could write none of them (it is down, say).
    """
    outcomes: list[BaseException | None] = [None] * len(submissions)
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
    with session_scope() as session:
        job_service.insert_submissions(session, submissions)


def _publish(jobs: list[Job]) -> None:
    refused = []
    for job in jobs:
        JOBS_SUBMITTED.labels(job.type, job.queue).inc()
        if not publish_job(job.id, job.queue, job.priority):
            refused.append(job)
    if refused:
        try:
            with session_scope() as session:
                job_service.unpublished(session, refused)
        except Exception:  # committed as dispatched: the sweeper's broker scan finds them
            log.warning("could not take back the dispatch mark of %d jobs", len(refused))


group_commit = GroupCommit()
