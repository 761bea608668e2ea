"""What users and the sweeper do to jobs once they exist: cancel, deadlines, retry."""

from __future__ import annotations

from dataclasses import dataclass

from sqlalchemy import func, select, update
from sqlalchemy.orm import Session

from app.broker.dispatch import TASK_ASSEMBLE_JOB
from app.db import database_clock, utcnow
from app.ids import new_id
from app.models import File, FilePurpose, Job, JobStatus, JobType, Tenant
from app.services.errors import Conflict
from app.services.jobs import add_event, get_job, transition
from app.services.openai import is_batch
from app.services.results import ResultFile, retry_lines_uri
from app.services.shards import DEADLINE_ERROR, request_stop
from app.services.tenants import check_job_quota
from app.unit_of_work import Message, send_after_commit


def request_cancel(session: Session, tenant: Tenant, job_id: str) -> tuple[Job, bool]:
    """Returns (job, assemble_now). A queued job is cancelled at once; a running one is asked to
    stop at its workers' next chunk, keeping what they finished. With no worker on any of its
    shards (assemble_now), its assembly's message goes once this commits."""
    job = get_job(session, tenant, job_id)
    if transition(
        session, job.id, [JobStatus.QUEUED], JobStatus.CANCELLED, cancel_requested_at=utcnow()
    ):
        session.refresh(job)
        return job, False
    # Conditional on `running` itself: the status read above may already be out of date.
    assemble_now = request_stop(session, job.id)
    session.refresh(job)
    if job.status not in (JobStatus.CANCELLING, JobStatus.CANCELLED):
        raise Conflict(f"job {job.id} is already {job.status}", code="job_finished")
    if assemble_now:
        send_after_commit(session, Message(TASK_ASSEMBLE_JOB, [job.id], job.queue))
    return job, assemble_now


def expire_deadline(session: Session, job: Job) -> bool:
    """Stop a job past its deadline; True when it must be assembled now (nothing running).

    A queued job ends `cancelled` at once, except an OpenAI batch: its requests must still
    reach its error file as `batch_expired`, so it is stopped with no shards to run and its
    assembly (a worker's, from the file) writes them."""
    if is_batch(job):
        if transition(
            session,
            job.id,
            [JobStatus.QUEUED],
            JobStatus.CANCELLING,
            error=DEADLINE_ERROR,
            event_data={"reason": "deadline_exceeded"},
            cancel_requested_at=utcnow(),
            shards_total=0,
            held_at=None,
            notice=None,
        ):
            return True
    elif transition(
        session,
        job.id,
        [JobStatus.QUEUED],
        JobStatus.CANCELLED,
        error=DEADLINE_ERROR,
        event_data={"reason": "deadline_exceeded"},
    ):
        return False
    return request_stop(session, job.id, DEADLINE_ERROR)


def create_retry(session: Session, tenant: Tenant, job_id: str) -> Job:
    """A new job over just the items that failed, linked to the first by `retry_of`."""
    job = get_job(session, tenant, job_id)
    if job.type != JobType.INFERENCE or not job.is_terminal:
        raise Conflict(
            f"job {job.id} is {job.status}; only a finished batch job can be retried",
            code="not_retryable",
        )
    if not job.error_file_id or not job.input_file_id:
        raise Conflict(f"job {job.id} has no failed items to retry", code="nothing_to_retry")
    check_job_quota(session, tenant)
    # The input of failed lines is made by the worker that plans the retry (build_retry_input):
    # reading two files of any size has no place in a request.
    retry = Job(
        tenant_id=tenant.id,
        type=job.type,
        status=JobStatus.QUEUED,
        model=job.model,
        model_version_id=job.model_version_id,
        device=job.device,
        queue=job.queue,
        priority=job.priority,
        input_file_id=None,
        params=job.params,
        webhook=job.webhook,
        meta=job.meta,
        retry_of=job.id,
        usage={},
    )
    session.add(retry)
    session.flush()
    queued = {"queue": retry.queue, "retry_of": job.id, "priority": retry.priority}
    add_event(session, retry.id, "queued", queued)
    return retry


@dataclass(frozen=True)
class RetrySource:
    tenant_id: str
    error_uri: str
    input_uri: str
    #: the original numbers of the input's lines when the job retried is itself a retry
    #: (workers/tasks/retry_lines.py); its error lines already carry them
    lines_uri: str | None = None


def retry_source(session: Session, job: Job) -> RetrySource | None:
    """Where a retry's failed lines come from: the first job's error and input files (None when
    either is gone, deleted since the retry was asked for)."""
    first = session.get(Job, job.retry_of) if job.retry_of else None
    if first is None or not first.error_file_id or not first.input_file_id:
        return None
    error_file = session.get(File, first.error_file_id)
    input_file = session.get(File, first.input_file_id)
    if error_file is None or input_file is None:
        return None
    lines = retry_lines_uri(first.tenant_id, first.id) if first.retry_of else None
    return RetrySource(job.tenant_id, error_file.uri, input_file.uri, lines)


def point_at_input(
    session: Session, job_id: str, tenant_id: str, made: ResultFile, filename: str
) -> File:
    """Register an input file a planner made (a retry's lines, an archive's items) and make it
    the job's input; the caller holds the job's lease and writes the event."""
    file = File(
        id=new_id("file"),
        tenant_id=tenant_id,
        purpose=FilePurpose.BATCH,
        filename=filename,
        uri=made.uri,
        bytes=made.size,
        sha256=made.sha256,
        items=made.lines,
        created_at=database_clock(),
    )
    session.add(file)
    session.flush()
    session.execute(update(Job).where(Job.id == job_id).values(input_file_id=file.id))
    return file


def attach_retry_input(
    session: Session, job_id: str, owner: str, tenant_id: str, made: ResultFile
) -> bool:
    """Register the input a planner made for a retry and point the job at it, while that
    planner still holds the job's lease (False, with nothing written, once it does not)."""
    held = session.execute(
        select(Job.id)
        .where(Job.id == job_id, Job.lease_owner == owner, Job.input_file_id.is_(None))
        .with_for_update(key_share=True)
    ).first()
    if held is None:
        return False
    file = point_at_input(session, job_id, tenant_id, made, f"{job_id}_retry.jsonl")
    add_event(session, job_id, "retry_input", {"file_id": file.id, "items": made.lines})
    return True


def jobs_past_deadline(session: Session, limit: int = 100) -> list[Job]:
    return list(
        session.scalars(
            select(Job)
            .where(
                Job.deadline_at < func.statement_timestamp(),
                Job.status.in_([JobStatus.QUEUED, JobStatus.RUNNING]),
            )
            .limit(limit)
        )
    )
