"""The sweeper's reads and writes: work that nobody will finish, found in PostgreSQL.

`app/sweeper.py` decides what to publish again (with what the broker still holds, asked
through `app/broker/dispatch.py`); every query it needs is here. Each function takes the
session of one sweep step and at most `limit` rows, so a sweep stays bounded however large the
backlog: every condition is in the SQL, before the LIMIT (never a Python filter after it,
which would let 500 healthy rows hide a stuck one), the oldest first. Leases and grace periods
are judged by the database's clock (`now()`), as they are written
(docs/decisions/0014-integrity.md).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from sqlalchemy import Connection, exists, func, select, update
from sqlalchemy.orm import Session

from app.models import Job, JobShard, JobStatus, JobType, ShardStatus
from app.services.jobs import NO_GPU_WORKER, add_event, transition
from app.services.shards import (
    ACTIVE_SHARD,
    cancel_queued_shards,
    fail_job,
    give_up_shard,
    lock_job,
    past,
)

OCCUPIED = (JobStatus.RUNNING, JobStatus.CANCELLING)  # a worker holds (or held) the job


def try_lock(conn: Connection, key: int) -> bool:
    """Take the session-level advisory lock `key` on `conn` if nobody holds it (kept until the
    connection closes: one sweeper acts, the others wait for it to go). `conn` is in
    autocommit: the lock outlives the statement, and there is no transaction to end."""
    return bool(conn.execute(select(func.pg_try_advisory_lock(key))).scalar())


def db_now(session: Session) -> datetime:
    """The database's clock: the one every lease, grace period and staleness is judged by."""
    now: datetime = session.execute(select(func.statement_timestamp())).scalar_one()
    return now


def close_shards_of_stopping_jobs(session: Session, limit: int) -> None:
    """A stopping job runs nothing more: its waiting shards close, so it can be assembled.
    Job rows first, then their shards (the lock order of app/services/shards.py); a job whose
    row another transaction holds is left for the next sweep."""
    stopping = session.scalars(
        select(Job.id)
        .where(
            Job.status == JobStatus.CANCELLING,
            exists().where(JobShard.job_id == Job.id, JobShard.status == ShardStatus.QUEUED),
        )
        .order_by(Job.created_at)
        .limit(limit)
    ).all()
    for job_id in stopping:
        if lock_job(session, job_id, skip_locked=True):
            cancel_queued_shards(session, job_id)


@dataclass
class ExpiredLeases:
    resend: list[tuple[str, int, str]] = field(default_factory=list)  # (job id, index, queue)
    failed: int = 0  # jobs failed: a shard used up its attempts


def _lapsed_shard(*where: Any) -> Any:
    return (
        select(*where)
        .join(Job, Job.id == JobShard.job_id)
        .where(
            JobShard.status == ShardStatus.RUNNING,
            past(JobShard.lease_expires_at),
            Job.status.in_(OCCUPIED),
        )
    )


def expire_shard_leases(session: Session, max_attempts: int, limit: int) -> ExpiredLeases:
    """Shards whose lease ran out (their worker died or hung): queued again for another attempt
    (marked released, to be sent at once), closed if their job is stopping, or their job failed
    once they used up `max_attempts`. Job row first, then the shard, as everywhere."""
    candidates = session.execute(
        _lapsed_shard(JobShard.id, JobShard.job_id).order_by(JobShard.lease_expires_at).limit(limit)
    ).all()
    expired = []
    for shard_id, job_id in candidates:
        if not lock_job(session, job_id, skip_locked=True):
            continue
        row = session.execute(
            _lapsed_shard(JobShard, Job.queue, Job.status)
            .where(JobShard.id == shard_id)
            .with_for_update(of=JobShard, skip_locked=True)
        ).first()
        if row is not None:
            expired.append(row)
    outcome = ExpiredLeases()
    for shard, queue, job_status in expired:
        info = {"shard": shard.index, "attempt": shard.attempts, "owner": shard.lease_owner}
        add_event(session, shard.job_id, "lease_expired", info)
        if job_status == JobStatus.CANCELLING:
            # The dead attempt's part files may end mid-line: they are left out.
            shard.status, shard.finished_at = ShardStatus.CANCELLED, func.now()
            shard.succeeded = shard.failed = 0  # its items are in neither result file
            shard.lease_owner = shard.lease_expires_at = None
            continue
        if shard.attempts >= max_attempts:
            give_up_shard(session, shard)
            outcome.failed += 1
            continue
        shard.status, shard.lease_owner, shard.lease_expires_at = ShardStatus.QUEUED, None, None
        # Sent again at once, inside the window it already held (a fast-path shard, which had
        # no message, joins it): marked released here, so no releaser sends it a second time.
        shard.last_error, shard.dispatched_at = "lease expired", func.now()
        outcome.resend.append((shard.job_id, shard.index, queue))
    return outcome


def queued_jobs(
    session: Session, created_before: datetime, limit: int
) -> list[tuple[str, str, datetime | None]]:
    """(job id, queue, last published) of queued jobs, each of which should have a message. A
    held job has none on purpose: `admission.release` sends it when its tenant has room."""
    rows = session.execute(
        select(Job.id, Job.queue, Job.dispatched_at)
        .where(Job.status == JobStatus.QUEUED, Job.created_at < created_before)
        .where(Job.held_at.is_(None))
        .order_by(Job.created_at)
        .limit(limit)
    ).all()
    return [(job_id, queue, dispatched) for job_id, queue, dispatched in rows]


def released_shards(session: Session, limit: int) -> list[tuple[str, int, str, datetime | None]]:
    """(job id, index, queue, last published) of released shards waiting for a worker. A shard
    never released waits for the scheduler's window, with no message to lose: not listed."""
    rows = session.execute(
        select(JobShard.job_id, JobShard.index, Job.queue, JobShard.dispatched_at)
        .join(Job, Job.id == JobShard.job_id)
        .where(
            JobShard.status == ShardStatus.QUEUED,
            JobShard.dispatched_at.is_not(None),
            Job.status == JobStatus.RUNNING,
        )
        .order_by(JobShard.dispatched_at)
        .limit(limit)
    ).all()
    return [(job_id, index, queue, dispatched) for job_id, index, queue, dispatched in rows]


def dead_planners(
    session: Session, max_attempts: int, sent_after: datetime | None, limit: int
) -> list[tuple[str, str]]:
    """Jobs whose planner (or trainer) lease ran out before it recorded any shard. A stopping
    one is cancelled, one that used up `max_attempts` fails; the rest, (job id, queue), need
    another planner, except those published again after `sent_after` (still on their way)."""
    jobs = session.scalars(
        select(Job)
        .where(
            Job.status.in_(OCCUPIED),
            Job.shards_total.is_(None),
            past(Job.lease_expires_at),
        )
        .order_by(Job.lease_expires_at)
        .limit(limit)
    ).all()
    again = []
    for job in jobs:
        if job.status == JobStatus.CANCELLING:  # stopped before anything ran
            transition(
                session,
                job.id,
                [JobStatus.CANCELLING],
                JobStatus.CANCELLED,
                lease_owner=None,
                lease_expires_at=None,
            )
        elif job.attempts >= max_attempts:
            if job.type == JobType.TRAINING:
                code = "worker_lost"
                message = f"training lost its worker {job.attempts} times (killed or hung)"
            else:
                code = "planning_failed"
                message = f"the input could not be split into shards in {job.attempts} attempts"
            fail_job(session, job.id, code, message)
        elif sent_after is not None and job.dispatched_at and job.dispatched_at > sent_after:
            continue  # sent again lately; its message may still be waiting
        else:
            again.append((job.id, job.queue))
    return again


def unassembled_jobs(session: Session, limit: int) -> list[tuple[str, str]]:
    """(job id, queue) of jobs whose shards are all closed and that nobody is assembling, the
    oldest first. One statement: the active shards are looked for in it (their partial index),
    not counted per row afterwards."""
    active = exists().where(JobShard.job_id == Job.id, JobShard.status.in_(ACTIVE_SHARD))
    rows = session.execute(
        select(Job.id, Job.queue)
        .where(
            Job.status.in_(OCCUPIED),
            Job.shards_total.is_not(None),
            Job.lease_owner.is_(None) | past(Job.lease_expires_at),
            ~active,
        )
        .order_by(Job.created_at)
        .limit(limit)
    ).all()
    return [(job_id, queue) for job_id, queue in rows]


def note_no_gpu_worker(session: Session, limit: int) -> None:
    """Queued GPU jobs say that no GPU worker is running (the caller checked the heartbeats)."""
    waiting = session.scalars(
        select(Job.id)
        .where(Job.status == JobStatus.QUEUED, Job.queue == "gpu", Job.notice.is_(None))
        .order_by(Job.created_at)
        .limit(limit)
    ).all()
    for job_id in waiting:
        session.execute(update(Job).where(Job.id == job_id).values(notice=NO_GPU_WORKER))
        add_event(session, job_id, "waiting_for_gpu_worker", {"notice": NO_GPU_WORKER})


def mark_job_redispatched(session: Session, job_id: str, when: datetime) -> None:
    session.execute(update(Job).where(Job.id == job_id).values(dispatched_at=when))
    add_event(session, job_id, "redispatched", {"by": "sweeper"})


def mark_shard_dispatched(session: Session, job_id: str, index: int, when: datetime) -> None:
    """The sweeper sent the shard's message again: only a shard still released and waiting is
    marked (one the scheduler recalled meanwhile stays recalled; its message claims nothing)."""
    session.execute(
        update(JobShard)
        .where(
            JobShard.job_id == job_id,
            JobShard.index == index,
            JobShard.status == ShardStatus.QUEUED,
            JobShard.dispatched_at.is_not(None),
        )
        .values(dispatched_at=when)
    )
