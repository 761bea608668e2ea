"""Shard results found lost at assembly: a part file missing, or holding fewer lines than its
shard's close recorded. Lost lines are never assembled as if they were empty: the shard runs
again (or, on a stopping job, keeps none of its items), so a job ends with every line once."""

from __future__ import annotations

from collections.abc import Collection
from typing import Literal

from sqlalchemy import select, update
from sqlalchemy.orm import Session

from app.models import Job, JobShard, JobStatus, ShardStatus
from app.services.jobs import add_event
from app.services.shards import count_sums, fail_job, lock_job

RESULTS_LOST = "results_lost"

Redo = Literal["run", "assemble", "failed", "lost"]


def redo_lost_parts(
    session: Session, job_id: str, owner: str, indexes: Collection[int], max_attempts: int
) -> Redo:
    """The shards `indexes` of a job that `owner` is assembling lost their part files.

    "run": they are queued again, unreleased (the scheduler sends them as any planned shard)
    and the assembly gives up the job's lease; "assemble": the job is stopping, so they keep
    none of their items (as a shard whose worker died while cancelling) and the job can be
    assembled again at once; "failed": one of them used up `max_attempts`, the job fails with
    `results_lost`; "lost": `owner` no longer holds the job, nothing is written.
    """
    if not lock_job(session, job_id):
        return "lost"
    status = session.scalar(
        select(Job.status).where(
            Job.id == job_id,
            Job.lease_owner == owner,
            Job.status.in_([JobStatus.RUNNING, JobStatus.CANCELLING]),
        )
    )
    if status is None:
        return "lost"
    shards = session.scalars(
        select(JobShard)
        .where(JobShard.job_id == job_id, JobShard.index.in_(list(indexes)))
        .order_by(JobShard.index)
        .with_for_update()
    ).all()
    add_event(session, job_id, RESULTS_LOST, {"shards": [s.index for s in shards]}, flush=False)
    if status == JobStatus.RUNNING and any(s.attempts >= max_attempts for s in shards):
        message = f"the results of shard {shards[0].index} were lost {max_attempts} times"
        fail_job(session, job_id, RESULTS_LOST, message, lease_owner=owner)
        return "failed"
    again = status == JobStatus.RUNNING
    for shard in shards:
        shard.parts_attempt = shard.parts_stem = None
        shard.succeeded = shard.failed = shard.tokens = shard.completion_tokens = 0
        if again:
            shard.status, shard.finished_at, shard.dispatched_at = ShardStatus.QUEUED, None, None
            shard.last_error = "results lost: its part files were missing or short"
        else:
            shard.status = ShardStatus.CANCELLED  # its items are in neither result file
    session.flush()
    session.execute(
        update(Job)
        .where(Job.id == job_id)
        .values(lease_owner=None, lease_expires_at=None, **count_sums(job_id))
    )
    return "run" if again else "assemble"
