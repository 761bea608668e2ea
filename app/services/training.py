"""A training job's records: checkpoints, progress, and its end.

A training run holds the job's own lease; every write here is conditional on it (`owner`), so
an attempt that lost the job to another can record nothing. Registering the new model version
and marking the job `succeeded` are one transaction: a job never registers twice, and never
succeeds without its model.
"""

from __future__ import annotations

from typing import Any

from sqlalchemy import func, select, update
from sqlalchemy.orm import Session

from app.models import Job, JobEvent, JobStatus
from app.services import shards as shard_service
from app.services.jobs import add_event, notify_progress, transition
from app.services.models import add_trained_version


def _held(job_id: str, owner: str) -> Any:
    return (Job.id == job_id) & (Job.lease_owner == owner)


def record_checkpoint(session: Session, job_id: str, owner: str, epoch: int, attempt: str) -> bool:
    """Record that `attempt` saved epoch N, only while it holds the job (the lock keeps the
    answer true until commit); False: another attempt holds it now."""
    held = session.execute(
        select(Job.id).where(_held(job_id, owner)).with_for_update(key_share=True)
    ).first()
    if held is not None:
        add_event(session, job_id, "checkpoint", {"epoch": epoch, "attempt": attempt})
    return held is not None


def last_checkpoint(session: Session, job_id: str) -> dict[str, Any] | None:
    """The newest recorded checkpoint's event data ({"epoch", "attempt"}), if any."""
    return session.scalar(
        select(JobEvent.data)
        .where(JobEvent.job_id == job_id, JobEvent.type == "checkpoint")
        .order_by(JobEvent.id.desc())
        .limit(1)
    )


def steps_as_counts(progress: dict[str, Any]) -> dict[str, int]:
    """A training job's `counts` are its steps, not items: `total` is every step of the run,
    `succeeded` the steps done, `failed` stays 0. The public Job has one `counts` for every
    type, so progress bars, `wait` and `/ui` work as for batch jobs; `progress` says the same in
    its own words (step, steps_total, epoch). This is the one place steps go into counts, and
    usage and metrics count only inference jobs' counts as items."""
    return {"counts_total": int(progress["steps_total"]), "counts_succeeded": int(progress["step"])}


def record_progress(session: Session, job_id: str, owner: str, progress: dict[str, Any]) -> None:
    session.execute(
        update(Job)
        .where(_held(job_id, owner))
        .values(progress=progress, **steps_as_counts(progress))
    )
    notify_progress(session, job_id)


def succeed(
    session: Session,
    job_id: str,
    owner: str,
    version: dict[str, Any],
    metrics: dict[str, Any],
    usage: dict[str, float],
) -> bool:
    """Register the trained model as the next version of its name and end the job with it;
    False, with nothing registered (the savepoint around both rolled back), when the job is no
    longer this attempt's (cancelled meanwhile, or taken over). `version`:
    add_trained_version's arguments. The caller's unit of work commits."""
    savepoint = session.begin_nested()
    registered = add_trained_version(session, **version)
    ref = f"{version['name']}@{registered.version}"
    done = transition(
        session,
        job_id,
        [JobStatus.RUNNING],
        JobStatus.SUCCEEDED,
        event_data={"model": ref},
        where=[Job.lease_owner == owner],
        result={"model": ref, "metrics": metrics},
        usage=usage,
        lease_owner=None,
        lease_expires_at=None,
    )
    if not done:
        savepoint.rollback()  # a savepoint only: the unit of work still owns the commit
    return done


def give_back(session: Session, job_id: str, owner: str) -> None:
    """Past the task's time limit: the lease lapses now, so the sweeper dispatches it again."""
    session.execute(update(Job).where(_held(job_id, owner)).values(lease_expires_at=func.now()))
    add_event(session, job_id, "time_limit", {"owner": owner})


def fail(session: Session, job_id: str, owner: str, code: str, message: str) -> None:
    shard_service.fail_job(session, job_id, code, message, lease_owner=owner)


def stop(session: Session, job_id: str, owner: str) -> None:
    """Cancelled, or past its deadline: the job ends `cancelled`; no version is registered."""
    job = session.get_one(Job, job_id)
    if job.status == JobStatus.RUNNING and shard_service.past_deadline(session, job_id):
        shard_service.request_stop(session, job_id, shard_service.DEADLINE_ERROR)
    transition(
        session,
        job_id,
        [JobStatus.CANCELLING],
        JobStatus.CANCELLED,
        where=[Job.lease_owner == owner],
        lease_owner=None,
        lease_expires_at=None,
    )
