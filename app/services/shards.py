"""Shards and leases: the bookkeeping that lets any worker die without losing an item.

Every write is conditional on the status and, while work is held, on the lease owner, so a late
or duplicated task can neither finish work it no longer holds nor run finished work again.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any, Literal, cast

from sqlalchemy import (
    ColumnElement,
    CursorResult,
    Executable,
    SQLColumnExpression,
    func,
    or_,
    select,
    update,
)
from sqlalchemy.orm import Session

from app.db import database_clock, skip_commit_wait, utcnow
from app.models import Job, JobShard, JobStatus, ShardStatus
from app.services import webhooks
from app.services.jobs import add_event, notify, notify_progress, transition, transition_job
from app.services.tenants import uncapped

ACTIVE_SHARD = (ShardStatus.QUEUED, ShardStatus.RUNNING)
DEADLINE_ERROR = {"code": "deadline_exceeded", "message": "the job ran past its deadline"}


def _execute(session: Session, statement: Executable) -> CursorResult[*tuple[Any, ...]]:
    """`session.execute` of an UPDATE or INSERT, whose result is a cursor's: its `rowcount` is
    read here (SQLAlchemy types every result as the general `Result`)."""
    return cast(CursorResult[*tuple[Any, ...]], session.execute(statement))


def held_by(shard_id: int, owner: str) -> tuple[ColumnElement[bool], ...]:
    """The shard is running under this owner's lease: the guard of every write while working."""
    return (
        JobShard.id == shard_id,
        JobShard.lease_owner == owner,
        JobShard.status == ShardStatus.RUNNING,
    )


def lock_job(session: Session, job_id: str, skip_locked: bool = False) -> bool:
    """Lock a job's row for this transaction; False if it is gone (or, with skip_locked, held).

    The one lock order: a path that writes a job and its shards locks the job row first, then
    the shards, so two such paths never wait on each other in a circle. FOR NO KEY UPDATE is
    what an UPDATE of the row takes anyway; it lets event and shard inserts (whose foreign keys
    take KEY SHARE) through.
    """
    locked = session.execute(
        select(Job.id)
        .where(Job.id == job_id)
        .with_for_update(key_share=True, skip_locked=skip_locked)
    ).first()
    return locked is not None


def lease_until(seconds: float) -> ColumnElement[datetime]:
    """A lease's end by the database's clock, never a host's: every lease is written
    and compared in SQL, so a worker whose clock is minutes off neither loses its lease early
    nor keeps a dead one late (docs/decisions/0014-integrity.md)."""
    # statement_timestamp(), not now(): now() is when the transaction began, and a claim that
    # waited for a lock in it would write a lease shorter by the wait.
    return func.statement_timestamp() + timedelta(seconds=seconds)


def past(column: SQLColumnExpression[datetime | None]) -> ColumnElement[bool]:
    """`column` (a lease's end, a deadline) has passed, by the database's clock."""
    return column < func.statement_timestamp()


@dataclass(frozen=True)
class ShardRange:
    start_item: int
    end_item: int
    start_offset: int
    start_line: int


def claim_for_planning(
    session: Session,
    job_id: str,
    owner: str,
    worker: str,
    lease_seconds: float,
    takeover_of: str | None = None,
    admitted: bool = False,
) -> Job | None:
    """Start a queued job, or take over one whose planner (or trainer) died before it made
    shards: its lease ran out, or it is `takeover_of`, an owner known to be dead.

    A queued job starts here only if its tenant has no running cap, unless `admitted` (the
    caller checked the cap under the tenant's lock: app/services/admission.py)."""
    now = func.now()
    lapsed = past(Job.lease_expires_at)
    if takeover_of is not None:
        lapsed = or_(lapsed, Job.lease_owner == takeover_of)
    queued, unplanned = Job.status == JobStatus.QUEUED, Job.shards_total.is_(None)
    if not admitted:
        queued = queued & uncapped()
    job = transition_job(
        session,
        job_id,
        [JobStatus.QUEUED, JobStatus.RUNNING],
        JobStatus.RUNNING,
        event_data={"worker": worker, **({"takeover_of": takeover_of} if takeover_of else {})},
        notify_webhook=False,  # running -> running on a takeover: job.started is sent below
        flush_event=False,  # written with the plan's rows when the claim plans the job too
        where=[or_(queued, (Job.status == JobStatus.RUNNING) & unplanned & lapsed)],
        started_at=func.coalesce(Job.started_at, now),
        attempts=Job.attempts + 1,  # a planner that dies counts against MAX_ATTEMPTS too
        worker=worker,
        notice=None,
        held_at=None,
        lease_owner=owner,
        lease_expires_at=lease_until(lease_seconds),
    )
    if job is None:
        return None
    if job.attempts == 1 and webhooks.wants(job.webhook, "job.started"):
        notify(session, job, "job.started")  # once, however often the job is taken over
    return job


PlanOutcome = Literal["run", "run_here", "assemble", "lost"]


def create_shards(
    session: Session,
    job_id: str,
    owner: str,
    ranges: list[ShardRange],
    run_here_seconds: float | None = None,
    durable: bool = False,
) -> tuple[PlanOutcome, JobShard | None]:
    """Record the plan and give up the planning lease.

    "run": the scheduler releases shards to the broker once this commits; "assemble": a
    cancel came while planning, so no shard runs and the (empty) result is assembled now;
    "lost": another planner took over.

    With `run_here_seconds`, a plan of one shard is "run_here", returned with that shard: it
    is recorded already running under `owner`'s lease for that long (its first attempt), so
    the planner runs it without a trip through the broker or a claim of its own. That is a claim,
    committed without waiting for its WAL (`db.skip_commit_wait`) unless `durable` (the
    transaction queued a webhook, which must not be sent for a claim a crash could undo).
    """
    total = ranges[-1].end_item if ranges else 0
    status = _execute(
        session,
        update(Job)
        .where(
            Job.id == job_id,
            Job.lease_owner == owner,
            Job.shards_total.is_(None),
            Job.status.in_([JobStatus.RUNNING, JobStatus.CANCELLING]),
        )
        .values(
            shards_total=len(ranges), counts_total=total, lease_owner=None, lease_expires_at=None
        )
        .returning(Job.status),
    ).scalar_one_or_none()
    if status is None:
        return "lost", None
    shards = [
        # No `dispatched_at`: the scheduler releases them to the broker a window at a time
        # (app/services/scheduler.py), and the sweeper resends only released ones it lost.
        JobShard(
            job_id=job_id,
            index=i,
            start_item=r.start_item,
            end_item=r.end_item,
            start_offset=r.start_offset,
            start_line=r.start_line,
        )
        for i, r in enumerate(ranges)
    ]
    session.add_all(shards)
    add_event(session, job_id, "planned", {"shards": len(ranges), "items": total}, flush=False)
    if run_here_seconds is not None and len(shards) == 1 and status == JobStatus.RUNNING:
        shard = shards[0]
        shard.status, shard.lease_owner = ShardStatus.RUNNING, owner
        shard.lease_expires_at, shard.attempts = lease_until(run_here_seconds), 1
        shard.succeeded = shard.failed = 0
        # Released as the scheduler would: it holds a slot of the pool's window while it runs,
        # so other tenants' shards see it in flight (fair share, docs/decisions/0015).
        shard.dispatched_at = database_clock()  # aged by the database's clock
        add_event(session, job_id, "shard_started", {"shard": 0, "attempt": 1, "owner": owner})
        if not durable:
            skip_commit_wait(session)
        return "run_here", shard
    if status == JobStatus.CANCELLING:
        session.flush()
        cancel_queued_shards(session, job_id)
        return "assemble", None
    return "run", None


def claim_shard(
    session: Session,
    job_id: str,
    index: int,
    owner: str,
    lease_seconds: float,
    takeover_of: str | None = None,
) -> JobShard | None:
    """queued -> running under a new lease (or take over `takeover_of`, a dead owner's lease).

    The shard's counts restart at zero: its part files are written again from the start.
    """
    # A queued shard is claimed only while released: a message of a shard the scheduler took
    # back (app/services/scheduler.py, `_overtake`) finds it not released and does nothing.
    held = (
        ((JobShard.status == ShardStatus.QUEUED) & JobShard.dispatched_at.is_not(None))
        if takeover_of is None
        else ((JobShard.status == ShardStatus.RUNNING) & (JobShard.lease_owner == takeover_of))
    )
    if not lock_job(session, job_id):
        return None
    job_running = select(Job.id).where(Job.id == job_id, Job.status == JobStatus.RUNNING)
    shard: JobShard | None = _execute(
        session,
        update(JobShard)
        .where(
            JobShard.job_id == job_id,
            JobShard.index == index,
            held,
            JobShard.job_id.in_(job_running),
        )
        .values(
            status=ShardStatus.RUNNING,
            lease_owner=owner,
            lease_expires_at=lease_until(lease_seconds),
            attempts=JobShard.attempts + 1,
            succeeded=0,
            failed=0,
            last_error=None,
        )
        .returning(JobShard),
    ).scalar_one_or_none()
    if shard is None:
        return None
    skip_commit_wait(session)  # a claim: see db.skip_commit_wait
    _execute(
        session,
        update(Job)
        .where(Job.id == job_id)
        .values(attempts=func.greatest(Job.attempts, shard.attempts), **count_sums(job_id)),
    )
    add_event(
        session,
        job_id,
        "shard_started",
        {"shard": index, "attempt": shard.attempts, "owner": owner},
    )
    return shard


def count_sums(job_id: str) -> dict[str, Any]:
    # Job counts are the sums over its shards, so a repeated shard never counts twice.
    def total(column: Any) -> Any:
        return (
            select(func.coalesce(func.sum(column), 0))
            .where(JobShard.job_id == job_id)
            .scalar_subquery()
        )

    return {"counts_succeeded": total(JobShard.succeeded), "counts_failed": total(JobShard.failed)}


@dataclass(frozen=True)
class Progress:
    held: bool  # False: the lease was lost, stop without finishing
    job_status: JobStatus
    past_deadline: bool


def record_shard_progress(
    session: Session,
    shard_id: int,
    job_id: str,
    owner: str,
    succeeded: int,
    failed: int,
    lease_seconds: float,
) -> Progress:
    """Set the counts of this attempt so far (absolute: what its part files hold now) and renew
    the lease, in one round trip per table. Absolute values, guarded by the attempt's lease
    owner, make the write idempotent: `db_retry` running it again after a commit whose answer
    was lost writes the same numbers, never adds them twice."""
    lock_job(session, job_id)
    held = (
        _execute(
            session,
            update(JobShard)
            .where(*held_by(shard_id, owner))
            .values(
                succeeded=succeeded, failed=failed, lease_expires_at=lease_until(lease_seconds)
            ),
        ).rowcount
        == 1
    )
    if not held:  # the shard is someone else's now: touch nothing of the job
        return Progress(False, JobStatus.RUNNING, False)
    status, past_deadline, webhook = _execute(
        session,
        update(Job)
        .where(Job.id == job_id)
        .values(**count_sums(job_id))
        .returning(Job.status, func.coalesce(past(Job.deadline_at), False), Job.webhook),
    ).one()
    # Only jobs that asked for job.progress pay for the throttle's UPDATE on this hot path.
    if status == JobStatus.RUNNING and webhooks.wants(webhook, "job.progress"):
        notify_progress(session, job_id)
    return Progress(True, JobStatus(status), bool(past_deadline))


def renew_shard_lease(session: Session, shard_id: int, owner: str, lease_seconds: float) -> bool:
    return (
        _execute(
            session,
            update(JobShard)
            .where(*held_by(shard_id, owner))
            .values(lease_expires_at=lease_until(lease_seconds)),
        ).rowcount
        == 1
    )


def renew_job_lease(session: Session, job_id: str, owner: str, lease_seconds: float) -> bool:
    return (
        _execute(
            session,
            update(Job)
            .where(
                Job.id == job_id,
                Job.lease_owner == owner,
                Job.status.in_([JobStatus.RUNNING, JobStatus.CANCELLING]),
            )
            .values(lease_expires_at=lease_until(lease_seconds)),
        ).rowcount
        == 1
    )


def job_should_stop(session: Session, job_id: str) -> bool:
    """The job is not running any more (cancelling, failed) or is past its deadline."""
    status, past_deadline = session.execute(
        select(Job.status, func.coalesce(past(Job.deadline_at), False)).where(Job.id == job_id)
    ).one()
    return status != JobStatus.RUNNING or bool(past_deadline)


def past_deadline(session: Session, job_id: str) -> bool:
    """The job's deadline has passed, by the database's clock."""
    return bool(
        session.scalar(select(func.coalesce(past(Job.deadline_at), False)).where(Job.id == job_id))
    )


def parts_stem(index: int, attempt: int, owner: str) -> str:
    """How a shard attempt's part files are named: its index, its attempt and the random part of
    its lease's owner. The owner's part tells two claims apart even when they got the same
    attempt number, as they do when a claim (committed without waiting for its WAL:
    `db.skip_commit_wait`) was lost in a database crash while its worker went on."""
    return f"{index:06d}-{attempt}-{owner.rsplit(':', 1)[-1]}"


def closed_values(
    shard: JobShard, status: ShardStatus, owner: str, tokens: int, completion_tokens: int = 0
) -> dict[str, Any]:
    """What closing a shard writes besides its counts: it ends, its lease goes, the attempt
    whose part files are whole is this one (`owner`'s), and the tokens (read, and for text
    generation written: `completion_tokens`) are this attempt's. Only
    the attempt holding the lease closes a shard, and a closed shard never runs again, so a
    shard's tokens are counted once however many attempts it took."""
    return {
        "status": status,
        "finished_at": utcnow(),
        "lease_owner": None,
        "lease_expires_at": None,
        "parts_attempt": shard.attempts,
        "parts_stem": parts_stem(shard.index, shard.attempts, owner),
        "tokens": tokens,
        "completion_tokens": completion_tokens,
    }


def added_usage(
    previous: dict[str, float] | None,
    usage: dict[str, float],
    tokens: int,
    completion_tokens: int = 0,
) -> dict[str, float]:
    """A job's usage after a shard's finish: the seconds add every attempt's (a repeated shard
    did use the machine twice); `tokens` (what its model read) and `completion_tokens` (what
    it wrote) are the job's totals, the sums over its closed shards."""
    total = {k: round((previous or {}).get(k, 0.0) + v, 3) for k, v in usage.items()}
    total["tokens"] = tokens
    total["completion_tokens"] = completion_tokens
    return total


def finish_shard(
    session: Session,
    shard: JobShard,
    owner: str,
    status: ShardStatus,
    usage: dict[str, float],
    succeeded: int = 0,
    failed: int = 0,
    tokens: int = 0,
    completion_tokens: int = 0,
) -> bool:
    """Close a shard with the counts of this attempt's part files (absolute: a retried finish
    writes the same) and the tokens of all its items (read, and written); True when no shard of
    its job is left to run (time to assemble). A shard closes `succeeded` only with a line for
    each of its items."""
    # Lock the job row: shards of one job finish one at a time, so exactly one sees "none left".
    lock_job(session, shard.job_id)
    done = (
        _execute(
            session,
            update(JobShard)
            .where(*held_by(shard.id, owner), *whole_if_succeeded(status, succeeded + failed))
            .values(
                **closed_values(shard, status, owner, tokens, completion_tokens),
                succeeded=succeeded,
                failed=failed,
            ),
        ).rowcount
        == 1
    )
    if not done:
        return False
    _execute(session, update(Job).where(Job.id == shard.job_id).values(**count_sums(shard.job_id)))
    job = session.get_one(Job, shard.job_id, populate_existing=True)
    read, wrote = session.execute(
        select(
            func.coalesce(func.sum(JobShard.tokens), 0),
            func.coalesce(func.sum(JobShard.completion_tokens), 0),
        ).where(JobShard.job_id == shard.job_id)
    ).one()
    job.usage = added_usage(job.usage, usage, int(read or 0), int(wrote or 0))
    add_event(session, shard.job_id, f"shard_{status}", {"shard": shard.index})
    if active_shards(session, shard.job_id) == 0:
        return True
    # A finished shard is progress too (a short shard may record none of its own).
    if job.status == JobStatus.RUNNING and webhooks.wants(job.webhook, "job.progress"):
        notify_progress(session, shard.job_id)
    return False


def whole_if_succeeded(status: ShardStatus, lines: int) -> tuple[ColumnElement[bool], ...]:
    """A shard succeeds only with one output or error line per item of its range."""
    if status != ShardStatus.SUCCEEDED:
        return ()
    return (JobShard.end_item - JobShard.start_item == lines,)


def active_shards(session: Session, job_id: str) -> int:
    return (
        session.scalar(
            select(func.count()).where(JobShard.job_id == job_id, JobShard.status.in_(ACTIVE_SHARD))
        )
        or 0
    )


def cancel_queued_shards(session: Session, job_id: str) -> None:
    _execute(
        session,
        update(JobShard)
        .where(JobShard.job_id == job_id, JobShard.status == ShardStatus.QUEUED)
        .values(status=ShardStatus.CANCELLED, finished_at=utcnow()),
    )


def request_stop(session: Session, job_id: str, error: dict[str, str] | None = None) -> bool:
    """running -> cancelling (workers stop at their next micro-batch); queued shards never start.

    Returns True when nothing of the job is running any more, so it can be assembled now.
    """
    values: dict[str, Any] = {"cancel_requested_at": utcnow()}
    if error is not None:
        values["error"] = error
    transition(
        session,
        job_id,
        [JobStatus.RUNNING],
        JobStatus.CANCELLING,
        event_data={"reason": (error or {}).get("code", "cancel_requested")},
        **values,
    )
    job = session.get_one(Job, job_id, populate_existing=True)
    if job.status != JobStatus.CANCELLING:  # it had already ended
        return False
    cancel_queued_shards(session, job_id)
    return job.shards_total is not None and active_shards(session, job_id) == 0


def release_shard(session: Session, shard: JobShard, owner: str, reason: str) -> bool:
    """Give a shard back for another attempt (its task broke or ran out of time); False, with
    nothing written, unless `owner` still holds it (a stale attempt gives back nothing)."""
    lock_job(session, shard.job_id)
    released = _execute(
        session,
        update(JobShard)
        .where(*held_by(shard.id, owner))
        .values(
            status=ShardStatus.QUEUED,
            lease_owner=None,
            lease_expires_at=None,
            last_error=reason[:1000],
            dispatched_at=func.now(),
        ),
    ).rowcount
    if released != 1:
        return False
    add_event(
        session,
        shard.job_id,
        "shard_released",
        {"shard": shard.index, "attempt": shard.attempts, "reason": reason[:200]},
    )
    return True


def holds_shard(shard_id: int, owner: str) -> ColumnElement[bool]:
    """`owner` holds the shard's lease now: the guard of what an attempt decides for its job."""
    return select(JobShard.id).where(*held_by(shard_id, owner)).exists()


def fail_job(
    session: Session,
    job_id: str,
    code: str,
    message: str,
    where: tuple[ColumnElement[bool], ...] = (),
    event_data: dict[str, Any] | None = None,
    lease_owner: str | None = None,
) -> bool:
    """The job cannot finish: it ends `failed` with the reason, and its shards stop. With
    `lease_owner`, only while that owner holds the job's own lease."""
    if lease_owner is not None:
        where = (*where, Job.lease_owner == lease_owner)
    failed = transition(
        session,
        job_id,
        [JobStatus.RUNNING, JobStatus.CANCELLING],
        JobStatus.FAILED,
        event_data={"code": code, **(event_data or {})},
        where=where,
        error={"code": code, "message": message},
        lease_owner=None,
        lease_expires_at=None,
    )
    if failed:
        # Workers still on its shards see their lease gone at their next write and stop.
        _execute(
            session,
            update(JobShard)
            .where(JobShard.job_id == job_id, JobShard.status.in_(ACTIVE_SHARD))
            .values(status=ShardStatus.FAILED, lease_owner=None, lease_expires_at=None),
        )
    return failed


def give_up_shard(session: Session, shard: JobShard) -> None:
    """A shard whose worker died MAX_ATTEMPTS times fails its job."""
    reason = (
        f"shard {shard.index} lost its worker {shard.attempts} times "
        "(killed, out of memory, or hung)"
    )
    fail_job(
        session,
        shard.job_id,
        "worker_lost",
        reason,
        event_data={"shard": shard.index, "attempt": shard.attempts},
    )
