"""A tenant's running-jobs cap (`tenants set --max-running-jobs N`): the jobs over it wait queued.

The cap is held where a job starts, its planner's claim (every kind of job starts there:
planned, one-shard fast path, training). A tenant with no cap pays nothing: its claim's UPDATE
carries the condition `tenants.uncapped()`, and only a claim that fails on it comes here.

For a capped tenant a transaction-level advisory lock per tenant serializes the claims and
the releases, so two planners never both take the last slot. Under it a queued job starts when
its tenant runs fewer than N jobs (running or cancelling) counting, besides those, the tenant's
queued jobs of the same pool that go before it (priority, then submission): jobs start in that
order. Otherwise the job is *held*: `held_at` set, a `held` event, a notice, and its message is
spent. Whoever ends a job of a capped tenant releases the next ones once its transaction
commits (`release`, a follow-up of its unit of work: app/unit_of_work.py), and so does
`tenants set`;
the sweeper calls `release` for every tenant with held jobs, so a releaser that died never
leaves a job queued for ever.

Lock order: the tenant's lock, then job rows. Nothing takes the tenant's lock while it holds a
job row (an ending job's release runs after its commit), so the two never wait in a circle.
"""

from __future__ import annotations

import logging
from typing import Literal

from sqlalchemy import func, select, tuple_, update
from sqlalchemy.orm import Session

from app.db import utcnow
from app.models import Job, JobStatus, Tenant
from app.services.jobs import add_event, send_plan
from app.services.scheduler import OCCUPYING, PRIORITY_RANK
from app.unit_of_work import run_after_commit

log = logging.getLogger(__name__)

ADMISSION_LOCK = 0x6D66_6164  # "mfad", with the tenant's hash: one admitter per tenant


def _lock(session: Session, tenant_id: str) -> int | None:
    """Take the tenant's admission lock for this transaction; its cap (read under it)."""
    session.execute(select(func.pg_advisory_xact_lock(ADMISSION_LOCK, func.hashtext(tenant_id))))
    return session.scalar(select(Tenant.max_running_jobs).where(Tenant.id == tenant_id))


def running_jobs(session: Session, tenant_id: str) -> int:
    return (
        session.scalar(
            select(func.count()).where(Job.tenant_id == tenant_id, Job.status.in_(OCCUPYING))
        )
        or 0
    )


Admission = Literal["start", "held"]


def admit(session: Session, job_id: str) -> Admission | None:
    """For a queued job whose tenant has a running cap, before its claim: "start" when it may
    (the claim follows in this transaction, under the tenant's lock taken here), "held" when
    it waits (queued, `held_at`, a `held` event and notice); None when the job is not queued
    or its tenant has no cap (any more): the plain claim decides."""
    row = session.execute(
        select(Job.tenant_id, Job.queue, Job.created_at, PRIORITY_RANK).where(
            Job.id == job_id, Job.status == JobStatus.QUEUED
        )
    ).first()
    if row is None:
        return None
    tenant_id, queue, created_at, rank = row
    cap = _lock(session, tenant_id)
    if cap is None:
        return None
    running = running_jobs(session, tenant_id)
    ahead = session.scalar(
        select(func.count()).where(
            Job.tenant_id == tenant_id,
            Job.queue == queue,
            Job.status == JobStatus.QUEUED,
            tuple_(PRIORITY_RANK, Job.created_at, Job.id) < tuple_(rank, created_at, job_id),
        )
    )
    if running + (ahead or 0) < cap:
        return "start"
    name = session.scalar(select(Tenant.name).where(Tenant.id == tenant_id))
    notice = (
        f"waiting: tenant {name} runs at most {cap} jobs at once (max_running_jobs); "
        "this one starts when one of them ends"
    )
    held = session.execute(
        update(Job)
        .where(Job.id == job_id, Job.status == JobStatus.QUEUED)
        .values(held_at=func.coalesce(Job.held_at, utcnow()), notice=notice)
        .returning(Job.id)
    ).first()
    if held is None:
        return None
    data = {"reason": "max_running_jobs", "limit": cap, "running": running, "ahead": ahead or 0}
    add_event(session, job_id, "held", data)
    return "held"


def release(session: Session, tenant_id: str) -> list[tuple[str, str, str]]:
    """Mark dispatched the tenant's held jobs that may start now: the first (cap - running) of
    each pool's queued jobs, by priority then submission, that are held (the others have a
    message on its way). (job id, queue, priority) of each; their plan messages go once this
    commits (queued on the unit of work).
    With no cap (any more), every held job goes."""
    cap = _lock(session, tenant_id)
    queued = (
        select(
            Job.id,
            Job.queue,
            Job.held_at,
            func.row_number()
            .over(partition_by=Job.queue, order_by=(PRIORITY_RANK, Job.created_at, Job.id))
            .label("place"),
        )
        .where(Job.tenant_id == tenant_id, Job.status == JobStatus.QUEUED)
        .subquery()
    )
    picks = select(queued.c.id).where(queued.c.held_at.is_not(None))
    if cap is not None:
        free = cap - running_jobs(session, tenant_id)
        if free <= 0:
            return []
        picks = picks.where(queued.c.place <= free)
    released = session.execute(
        update(Job)
        .where(Job.id.in_(picks), Job.status == JobStatus.QUEUED, Job.held_at.is_not(None))
        .values(held_at=None, dispatched_at=func.statement_timestamp())
        .returning(Job.id, Job.queue, Job.priority)
    ).all()
    for job_id, queue, priority in released:
        add_event(session, job_id, "dispatched", {"queue": queue, "after": "held"}, flush=False)
        send_plan(session, job_id, queue, priority)
    session.flush()
    return [(job_id, queue, priority) for job_id, queue, priority in released]


def holding_tenants(session: Session, limit: int) -> list[str]:
    """Tenants with held jobs, the one held longest first: the sweeper releases what may start
    of theirs."""
    rows = session.scalars(
        select(Job.tenant_id)
        .where(Job.status == JobStatus.QUEUED, Job.held_at.is_not(None))
        .group_by(Job.tenant_id)
        .order_by(func.min(Job.held_at))  # the tenant held longest first
        .limit(limit)
    )
    return list(rows)


def held_jobs(session: Session) -> list[tuple[str, str, int]]:
    """(tenant name, queue, jobs held by max_running_jobs). For /metrics."""
    rows = session.execute(
        select(Tenant.name, Job.queue, func.count())
        .join(Tenant, Tenant.id == Job.tenant_id)
        .where(Job.status == JobStatus.QUEUED, Job.held_at.is_not(None))
        .group_by(Tenant.name, Job.queue)
    )
    return [(name, queue, count) for name, queue, count in rows]


def release_after_commit(session: Session, tenant_id: str) -> None:
    """Once `session` commits, release the tenant's held jobs that may start (in a unit of
    work of its own, when the ending this follows is visible to every planner)."""
    run_after_commit(session, ("release", tenant_id), lambda later: release(later, tenant_id))
