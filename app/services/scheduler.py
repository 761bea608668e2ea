"""The scheduler: which queued shards the broker carries, decided in PostgreSQL.

A plan records its shards `queued` with no `dispatched_at`: they wait here, not in the broker.
Each pool (queue) has a window, at most that many shard messages released and not finished;
a release fills what is free of it, one shard at a time, by fair share (docs/decisions/0006):

1. among tenants with a shard waiting in the pool, the one with the fewest shards in flight
   there (ties: the one whose latest release is oldest, then the oldest waiting job);
2. within that tenant, the job of highest priority, then the oldest job, then the shard order.

Releases run when a plan is recorded, when a shard finishes (in its task, after its commit)
and in every sweep. A full window does not make a tenant's higher-priority work wait behind
its own lower-priority shards that are released but not started yet (their messages still in
the broker): such a shard is recalled (its release taken back, its message left to find it
not released) and the better one released in its place, with its priority on its message so
that it goes first in the broker too (docs/decisions/0010). Between tenants, a full window
gives the tenant fair share picks next the unstarted slot of a tenant with two or more shards
more in flight, its message first too, so a newcomer waits for the shards running, not for
another tenant's queue (docs/decisions/0015).

A transaction-level advisory lock per pool serializes releasers, so two never fill one free
slot twice; under it, each release locks its job's row before its shard
(the one lock order); the released shards' messages are queued on the unit of work, sent
after the commit. A released shard whose message is lost has `dispatched_at`, so the sweeper
sends it again.
"""

from __future__ import annotations

from datetime import timedelta

from sqlalchemy import (
    BigInteger,
    ColumnElement,
    DateTime,
    Integer,
    String,
    Subquery,
    and_,
    case,
    column,
    func,
    select,
    text,
    true,
    update,
)
from sqlalchemy.orm import Session

from app.broker.dispatch import TASK_RUN_SHARD
from app.models import Job, JobPriority, JobShard, JobStatus, ShardStatus, Tenant, WorkerHeartbeat
from app.services.heartbeats import ALIVE_SECONDS
from app.services.jobs import add_event
from app.services.shards import ACTIVE_SHARD, lock_job
from app.unit_of_work import Message, send_after_commit

SCHEDULER_LOCK = 0x6D66_7363  # "mfsc", with the pool's hash: one releaser per pool at a time
#: A job in these states may have shards on workers (a cancelling job's running ones finish).
OCCUPYING = (JobStatus.RUNNING, JobStatus.CANCELLING)
PRIORITY_RANK = case(
    (Job.priority == JobPriority.HIGH, 0), (Job.priority == JobPriority.LOW, 2), else_=1
)


def in_flight(queue: str) -> tuple[ColumnElement[bool], ...]:
    """Released and not finished: a message in the broker, or a shard on a worker. A job of
    one shard run by its planner counts too: it is recorded released (decision 0015)."""
    return (
        Job.queue == queue,
        Job.status.in_(OCCUPYING),
        JobShard.status.in_(ACTIVE_SHARD),
        JobShard.dispatched_at.is_not(None),
    )


def waiting(queue: str) -> tuple[ColumnElement[bool], ...]:
    """Planned and not released yet: the window decides when."""
    return (
        Job.queue == queue,
        Job.status == JobStatus.RUNNING,
        JobShard.status == ShardStatus.QUEUED,
        JobShard.dispatched_at.is_(None),
    )


def window_size(session: Session, queue: str, setting: int, processes_per_worker: int) -> int:
    """`setting` when given; else twice the pool's live processes (each worker's heartbeat
    says how many it runs; `processes_per_worker` for one that does not), at least 2: every
    process busy and one message ready behind it, so a worker never waits for a release, and
    a newcomer waits behind about a window."""
    if setting > 0:
        return setting
    since = func.statement_timestamp() - timedelta(seconds=ALIVE_SECONDS)
    live = session.scalar(
        select(
            func.sum(func.coalesce(WorkerHeartbeat.processes, max(1, processes_per_worker)))
        ).where(WorkerHeartbeat.pool == queue, WorkerHeartbeat.seen_at > since)
    )
    return max(2, 2 * int(live or 0))


def others_waiting(session: Session, queue: str, tenant_id: str) -> bool:
    """Whether another tenant has work waiting in the pool: a shard waiting for its release, or
    a job queued and not held (its plan message is in the broker, maybe behind ours).

    A job of one shard runs in its planning task only when this is false: otherwise it takes
    its fair-share turn in the window like any shard (docs/decisions/0015), so one tenant's
    flood of small jobs cannot keep another tenant's plan message and shards behind it. On an
    idle farm, or with one tenant alone, it is one indexed query and the fast path is as it was.
    """
    shard = (
        select(JobShard.id)
        .join(Job, Job.id == JobShard.job_id)
        .where(*waiting(queue), Job.tenant_id != tenant_id)
        .exists()
    )
    job = (
        select(Job.id)
        .where(
            Job.queue == queue,
            Job.status == JobStatus.QUEUED,
            Job.held_at.is_(None),
            Job.tenant_id != tenant_id,
        )
        .exists()
    )
    return bool(session.scalar(select(shard | job)))


def count_in_flight(session: Session, queue: str) -> int:
    statement = select(func.count()).select_from(JobShard).join(Job, Job.id == JobShard.job_id)
    return session.scalar(statement.where(*in_flight(queue))) or 0


Pick = tuple[int, str, int, str]  #: (shard id, job id, index, the job's priority)
#: (job id, index, the message's priority): a shard message to publish. `normal` but for a
#: shard released in the slot of a recalled one: the window's waiting messages are fair
#: share's choices, so one tenant's `high` messages must not pass them all (they would take
#: every finish's slot) except where they take that tenant's own.
Released = tuple[str, int, str]


#: Each tenant's head in a pool: its best running job with a shard waiting (priority, then
#: age), and that job's first waiting shard. Found by index probes, never by a scan of the
#: backlog (migration 0018): the tenants with a running job in the pool one by one (a loose
#: index scan), and for each, per priority, its oldest running job with a waiting shard. Jobs
#: passed over on the way are those with no shard waiting: all released (so in flight, as many
#: as the window) or all done (assembling). A release costs the same with 100 or 100,000
#: shards waiting, and holds the pool's lock no longer.
_HEADS = """
WITH RECURSIVE tenants(tenant_id) AS (
    (SELECT tenant_id FROM jobs WHERE queue = :queue AND status = 'running'
     ORDER BY tenant_id LIMIT 1)
    UNION ALL
    SELECT (SELECT j.tenant_id FROM jobs j
            WHERE j.queue = :queue AND j.status = 'running' AND j.tenant_id > t.tenant_id
            ORDER BY j.tenant_id LIMIT 1)
    FROM tenants t WHERE t.tenant_id IS NOT NULL
)
SELECT head.id, head.job_id, head.index, head.priority, t.tenant_id, head.created_at, head.rank
FROM tenants t
CROSS JOIN LATERAL (
    SELECT s.id, s.job_id, s.index, j.priority, j.created_at, p.rank
    FROM (VALUES ('high', 0), ('normal', 1), ('low', 2)) AS p(priority, rank)
    CROSS JOIN LATERAL (
        SELECT j.id, j.priority, j.created_at FROM jobs j
        WHERE j.queue = :queue AND j.status = 'running' AND j.tenant_id = t.tenant_id
          AND j.priority = p.priority
          AND EXISTS (SELECT 1 FROM job_shards w WHERE w.job_id = j.id
                      AND w.status = 'queued' AND w.dispatched_at IS NULL)
        ORDER BY j.created_at, j.id LIMIT 1
    ) j
    CROSS JOIN LATERAL (
        SELECT s.id, s.job_id, s.index FROM job_shards s
        WHERE s.job_id = j.id AND s.status = 'queued' AND s.dispatched_at IS NULL
        ORDER BY s.index LIMIT 1
    ) s
    WHERE p.rank <= :worst_rank
    ORDER BY p.rank LIMIT 1
) head
WHERE t.tenant_id IS NOT NULL
"""


def heads(queue: str, worst_rank: int = 2) -> Subquery:
    """Each tenant's head in the pool (`_HEADS`): (id, job_id, index, priority, tenant_id,
    created_at, rank) of the first waiting shard of its best job; with `worst_rank` 1, among
    its high and normal jobs only."""
    statement = text(_HEADS).bindparams(queue=queue, worst_rank=worst_rank)
    columns = statement.columns(
        column("id", BigInteger),
        column("job_id", String),
        column("index", Integer),
        column("priority", String),
        column("tenant_id", String),
        column("created_at", DateTime(timezone=True)),
        column("rank", Integer),
    )
    return columns.subquery()


def _next_shard(session: Session, queue: str) -> Pick | None:
    """The shard fair share picks next, or None."""
    occupied = (
        select(
            Job.tenant_id,
            func.count().label("shards"),
            func.max(JobShard.dispatched_at).label("latest"),
        )
        .join(Job, Job.id == JobShard.job_id)
        .where(*in_flight(queue))
        .group_by(Job.tenant_id)
        .subquery()
    )
    head = heads(queue)  # each tenant's head: its best job's first waiting shard
    pick = (
        select(head.c.id, head.c.job_id, head.c.index, head.c.priority)
        .outerjoin(occupied, occupied.c.tenant_id == head.c.tenant_id)
        .order_by(
            func.coalesce(occupied.c.shards, 0),
            occupied.c.latest.asc().nulls_first(),
            head.c.created_at,
        )
        .limit(1)
    )
    row = session.execute(pick).first()
    return None if row is None else (row[0], row[1], row[2], row[3])


def release(session: Session, queue: str, window: int) -> list[Released]:
    """Mark the next shards of `queue` released, up to the window, then let each tenant's
    better work take the place of its own released, unstarted, lower-priority shards; what to
    publish (`Released`), queued on the unit of work to go once this commits. Every
    running job may have shards released: a tenant's running-jobs cap is held before, where a
    job starts (app/services/admission.py).
    Call it in a transaction of its own: it takes the pool's lock before job rows, and a
    caller already holding a job row could deadlock."""
    released = _release(session, queue, window)
    for job_id, index, priority in released:
        send_after_commit(session, Message(TASK_RUN_SHARD, [job_id, index], queue, priority))
    return released


def _release(session: Session, queue: str, window: int) -> list[Released]:
    session.execute(select(func.pg_advisory_xact_lock(SCHEDULER_LOCK, func.hashtext(queue))))
    free = window - count_in_flight(session, queue)
    released: list[Released] = []
    misses = swaps = 0  # a pick that changed under us (cancelled, failed) is looked for again
    while misses < 8:
        while free > 0 and misses < 8:
            picked = _next_shard(session, queue)
            if picked is None:
                return released
            if _mark_released(session, queue, picked):
                released.append((picked[1], picked[2], JobPriority.NORMAL))
                free -= 1
            else:
                misses += 1
        if free > 0 or swaps >= window:
            break
        swaps += 1
        outcome = _overtake_once(session, queue)
        if outcome is None:
            outcome = _rebalance_once(session, queue)
        if outcome is None:
            break
        if outcome == "freed":  # recalled, but the better shard changed: fill the slot
            free += 1
        elif not isinstance(outcome, str):  # "raced": look for another pair
            released.append(outcome)
    return released


def _mark_released(session: Session, queue: str, picked: Pick) -> bool:
    """Release one waiting shard (its job's row locked first); False if it changed meanwhile."""
    shard_id, job_id, index, _ = picked
    lock_job(session, job_id)
    marked = session.execute(
        update(JobShard)
        .where(
            JobShard.id == shard_id,
            JobShard.status == ShardStatus.QUEUED,
            JobShard.dispatched_at.is_(None),
            JobShard.job_id.in_(
                select(Job.id).where(Job.id == job_id, Job.status == JobStatus.RUNNING)
            ),
        )
        .values(dispatched_at=func.statement_timestamp())  # aged by the database's clock
        .returning(JobShard.id)
    ).first()
    if marked is None:
        return False
    add_event(session, job_id, "shard_dispatched", {"shard": index, "queue": queue})
    return True


def _overtake_once(session: Session, queue: str) -> Released | str | None:
    """With the window full: if a tenant's best waiting shard has a higher priority than one
    of its own released shards that no worker has started, recall that one (its message finds
    it not released: a worker's claim requires the release) and release the better one in its
    slot, its message marked `high` so that it goes before the waiting ones in the broker. A
    slot only changes hands within a tenant, so priority never crosses tenants. None: no such
    pair; "raced": a worker claimed the one to recall first; "freed": recalled, but the better
    shard changed meanwhile, so its slot is free."""
    swap = _overtaking_pair(session, queue)
    if swap is None:
        return None
    return _swap(session, queue, *swap)


def _swap(
    session: Session, queue: str, better: Pick, victim: tuple[int, str, int]
) -> Released | str:
    """Recall `victim` (released, unstarted) and release `better` in its slot, its message
    `high`; "raced" or "freed" as `_overtake_once` says."""
    victim_id, victim_job, victim_index = victim
    lock_job(session, victim_job)
    recalled = session.execute(
        update(JobShard)
        .where(
            JobShard.id == victim_id,
            JobShard.status == ShardStatus.QUEUED,
            JobShard.dispatched_at.is_not(None),
        )
        .values(dispatched_at=None)
        .returning(JobShard.id)
    ).first()
    if recalled is None:
        return "raced"
    add_event(
        session,
        victim_job,
        "shard_recalled",
        {"shard": victim_index, "queue": queue, "for": {"job": better[1], "shard": better[2]}},
    )
    if not _mark_released(session, queue, better):
        return "freed"
    return better[1], better[2], JobPriority.HIGH


def _rebalance_once(session: Session, queue: str) -> Released | str | None:
    """With the window full: the tenant fair share picks next (fewest shards in flight) takes
    the slot of a released, unstarted shard of a tenant with at least two more in flight than
    it, its message marked `high` so that it goes before the messages already waiting: a
    newcomer's first shard runs after the shards running now, not after a window of another
    tenant's shards queued in the broker (docs/decisions/0015). After a swap the newcomer has
    no more in flight than the other, so no slot ever swaps back. Outcomes as
    `_overtake_once`'s."""
    picked = _next_shard(session, queue)
    if picked is None:
        return None
    tenant = session.scalar(select(Job.tenant_id).where(Job.id == picked[1]))
    own = session.scalar(
        select(func.count())
        .select_from(JobShard)
        .join(Job, Job.id == JobShard.job_id)
        .where(*in_flight(queue), Job.tenant_id == tenant)
    )
    counts = (
        select(Job.tenant_id, func.count().label("shards"))
        .select_from(JobShard)
        .join(Job, Job.id == JobShard.job_id)
        .where(*in_flight(queue))
        .group_by(Job.tenant_id)
        .subquery()
    )
    victim = session.execute(
        select(JobShard.id, JobShard.job_id, JobShard.index)
        .join(Job, Job.id == JobShard.job_id)
        .join(counts, counts.c.tenant_id == Job.tenant_id)
        .where(
            Job.queue == queue,
            Job.status == JobStatus.RUNNING,
            Job.tenant_id != tenant,
            JobShard.status == ShardStatus.QUEUED,
            JobShard.dispatched_at.is_not(None),
            counts.c.shards >= (own or 0) + 2,
        )
        .order_by(counts.c.shards.desc(), PRIORITY_RANK.desc(), JobShard.dispatched_at.desc())
        .limit(1)
    ).first()
    if victim is None:
        return None
    return _swap(session, queue, picked, (victim[0], victim[1], victim[2]))


def _overtaking_pair(session: Session, queue: str) -> tuple[Pick, tuple[int, str, int]] | None:
    """(a tenant's best waiting shard, its released and unstarted shard of lower priority,
    the latest released first), or None when no tenant has such a pair."""
    head = heads(queue, worst_rank=1)  # a low job's shard never overtakes
    victim = (
        select(JobShard.id, JobShard.job_id, JobShard.index)
        .join(Job, Job.id == JobShard.job_id)
        .where(
            Job.queue == queue,
            Job.status == JobStatus.RUNNING,
            Job.tenant_id == head.c.tenant_id,
            PRIORITY_RANK > head.c.rank,
            JobShard.status == ShardStatus.QUEUED,
            JobShard.dispatched_at.is_not(None),
        )
        .order_by(PRIORITY_RANK.desc(), JobShard.dispatched_at.desc())
        .limit(1)
        .lateral()
    )
    row = session.execute(
        select(
            head.c.id,
            head.c.job_id,
            head.c.index,
            head.c.priority,
            victim.c.id,
            victim.c.job_id,
            victim.c.index,
        )
        .join(victim, true())
        .order_by(head.c.rank)
        .limit(1)
    ).first()
    if row is None:
        return None
    return (row[0], row[1], row[2], row[3]), (row[4], row[5], row[6])


def waiting_jobs(session: Session) -> list[tuple[str, str, int]]:
    """(tenant name, queue, jobs) with work not yet released: queued jobs (their plan is on
    its way) and running ones with shards waiting for the window. For /metrics."""
    unreleased = (
        select(JobShard.id)
        .where(
            JobShard.job_id == Job.id,
            JobShard.status == ShardStatus.QUEUED,
            JobShard.dispatched_at.is_(None),
        )
        .correlate(Job)
        .exists()
    )
    rows = session.execute(
        select(Tenant.name, Job.queue, func.count())
        .join(Tenant, Tenant.id == Job.tenant_id)
        .where((Job.status == JobStatus.QUEUED) | and_(Job.status == JobStatus.RUNNING, unreleased))
        .group_by(Tenant.name, Job.queue)
    )
    return [(name, queue, count) for name, queue, count in rows]


def shards_in_flight(session: Session) -> list[tuple[str, int]]:
    """(queue, shards released and not finished) per pool. For /metrics."""
    rows = session.execute(
        select(Job.queue, func.count())
        .select_from(JobShard)
        .join(Job, Job.id == JobShard.job_id)
        .where(
            Job.status.in_(OCCUPYING),
            JobShard.status.in_(ACTIVE_SHARD),
            JobShard.dispatched_at.is_not(None),
        )
        .group_by(Job.queue)
    )
    return [(queue, count) for queue, count in rows]
