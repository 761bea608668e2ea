"""Starting a job: the planner's claim, and the plan of a job too small to read first.

A planner claims a queued job (or takes over one whose planner died), then splits its input into
shards. When the input's item count is already known (the farm wrote the file itself: inline
items) and fits one shard, the plan needs no read of the input, so it is made in the claim's own
transaction and the claimed shard is handed back to run at once: one commit where a planned job
needs two, and no pass over the file. That is only while no other tenant has work waiting in the
pool: then the one shard takes its fair-share turn in the window like any other (decision 0015).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Literal

from sqlalchemy import select
from sqlalchemy.orm import Session

from app.models import (
    File,
    Job,
    JobShard,
    JobStatus,
    JobType,
    ModelVersion,
    ShardStatus,
)
from app.services import admission, control, scheduler, webhooks
from app.services import shards as shard_service
from app.services.jobs import add_event
from app.services.results import ResultFile


@dataclass(frozen=True)
class Claim:
    """What a planner holds once its claim committed."""

    job: Job
    input_uri: str | None  # None: a retry whose input is made from the first job's files
    input_bytes: int | None
    items: ItemKind  # what the job's items cost: its shard size (shard_items)
    retry: control.RetrySource | None
    shard: JobShard | None  # planned in the claim: this planner runs it now, under its lease
    #: planned in the claim, to wait for its turn ("run": release now) or a cancel ("assemble")
    planned: shard_service.PlanOutcome | None = None


def claim_job(
    session: Session,
    job_id: str,
    owner: str,
    worker: str,
    lease_seconds: float,
    max_attempts: int,
    owner_is_dead: Callable[[str | None], bool],
    shard_items: Callable[[ItemKind], int],
) -> Claim | None:
    """Claim a job for planning; None when it is not waiting for a planner.

    `owner_is_dead` says whether a lease's owner is known to be gone (a pool child killed
    mid-way leaves its lease behind, and its message comes back: the job is taken over now,
    not once the lease lapses). `shard_items(kind)` is the shard size for the job's items.
    """
    job = shard_service.claim_for_planning(session, job_id, owner, worker, lease_seconds)
    if job is None:  # queued of a tenant with a running cap, or running already
        admitted = admission.admit(session, job_id)
        if admitted == "held":  # it waits queued until one of its tenant's jobs ends
            return None
        if admitted == "start":  # within the cap, under the tenant's lock now
            job = shard_service.claim_for_planning(
                session, job_id, owner, worker, lease_seconds, admitted=True
            )
    if job is None:
        current = session.get(Job, job_id)
        if (
            current is None
            or current.status != JobStatus.RUNNING
            or current.shards_total is not None
            or not owner_is_dead(current.lease_owner)
        ):
            return None
        if current.attempts >= max_attempts:  # it keeps killing its worker
            message = f"the job lost its worker {current.attempts} times (killed)"
            shard_service.fail_job(session, job_id, "worker_lost", message)
            return None
        job = shard_service.claim_for_planning(
            session, job_id, owner, worker, lease_seconds, takeover_of=current.lease_owner
        )
        if job is None:
            return None
    kind = item_kind(session, job)
    if job.input_file_id is None:  # a retry: its input of failed lines is made by the planner
        return Claim(job, None, None, kind, control.retry_source(session, job), None)
    # The claim's event waits for the plan's rows below: one INSERT of events, not three.
    with session.no_autoflush:
        source = session.get_one(File, job.input_file_id)
        shard = planned = None
        if job.type == JobType.INFERENCE and source.items and source.items <= shard_items(kind):
            whole = [shard_service.ShardRange(0, source.items, 0, 1)]
            started = webhooks.wants(job.webhook, "job.started")  # queued by this claim
            here = lease_seconds if run_here(session, job) else None
            outcome, shard = shard_service.create_shards(
                session, job_id, owner, whole, run_here_seconds=here, durable=started
            )
            planned = None if shard is not None else outcome
    session.flush()
    return Claim(job, source.uri, source.bytes, kind, None, shard, planned)


def run_here(session: Session, job: Job) -> bool:
    """Whether a job of one shard may run in its planning task now: when no other tenant waits
    in its pool. Otherwise its shard waits for the scheduler like any other, so a tenant's
    flood of small jobs takes turns with the others (decision 0015)."""
    return not scheduler.others_waiting(session, job.queue, job.tenant_id)


def claim_shard(
    session: Session,
    job_id: str,
    index: int,
    owner: str,
    lease_seconds: float,
    max_attempts: int,
    owner_is_dead: Callable[[str | None], bool],
) -> JobShard | None:
    """Claim a queued shard to run it, or take over one whose owner is known to be dead (a
    pool child killed mid-shard leaves its lease behind: taken over now, not once it lapses);
    None when it is not waiting for a worker. A shard that killed its worker MAX_ATTEMPTS
    times fails its job instead."""
    shard = shard_service.claim_shard(session, job_id, index, owner, lease_seconds)
    if shard is not None:
        return shard
    current = session.scalar(
        select(JobShard).where(JobShard.job_id == job_id, JobShard.index == index)
    )
    if (
        current is None
        or current.status != ShardStatus.RUNNING
        or not owner_is_dead(current.lease_owner)
    ):
        return None
    if current.attempts >= max_attempts:
        shard_service.give_up_shard(session, current)
        return None
    return shard_service.claim_shard(
        session, job_id, index, owner, lease_seconds, takeover_of=current.lease_owner
    )


#: What a job's items cost, which sizes its shards: scikit-learn items ("cheap") cost
#: microseconds each, so their shards are larger (a shard's own bookkeeping would otherwise
#: cost more than its items); a picture costs a CPU about a hundred times a sentence, so
#: image shards are smaller (a crash repeats a shard).
ItemKind = Literal["cheap", "text", "image"]


def item_kind(session: Session, job: Job) -> ItemKind:
    if job.model_version_id is None:
        return "text"  # the builtin models are text models
    version = session.get_one(ModelVersion, job.model_version_id)
    if version.framework == "sklearn":
        return "cheap"
    task = version.task or ""
    # An audio item costs a CPU seconds, as a picture does: both take the short shards.
    heavy = task.startswith("image-") or task == "automatic-speech-recognition"
    return "image" if heavy else "text"


def model_task(session: Session, job: Job) -> str | None:
    """The task of the model version a job runs (None for a builtin: text models)."""
    if job.model_version_id is None:
        return None
    return session.get_one(ModelVersion, job.model_version_id).task


def attach_archive_input(
    session: Session,
    job_id: str,
    owner: str,
    source_file_id: str,
    made: ResultFile,
    kind: str = "images",
) -> bool:
    """Register the item file a planner made from an archive (of images, of audio: `kind`)
    and point the job at it, while that planner holds the job's lease (False, with nothing
    written, otherwise). The uploaded archive stays as it was; the event names both files."""
    job = session.execute(
        select(Job)
        .where(Job.id == job_id, Job.lease_owner == owner, Job.input_file_id == source_file_id)
        .with_for_update(key_share=True)
    ).scalar_one_or_none()
    if job is None:
        return False
    file = control.point_at_input(session, job_id, job.tenant_id, made, f"{job_id}_{kind}.jsonl")
    data = {"from_file_id": source_file_id, "file_id": file.id, "items": made.lines}
    add_event(session, job_id, "archive_input", data)
    return True
