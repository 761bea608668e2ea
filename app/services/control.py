"""What users and the sweeper do to jobs once they exist: cancel, deadlines, retry."""

from __future__ import annotations

import json
from collections.abc import Iterator

from sqlalchemy import select
from sqlalchemy.orm import Session

from app.db import utcnow
from app.models import File, FilePurpose, Job, JobStatus, JobType, Tenant
from app.services.errors import Conflict
from app.services.files import create_file
from app.services.jobs import add_event, get_job, transition
from app.services.shards import DEADLINE_ERROR, request_stop
from app.storage import get_store


def request_cancel(session: Session, tenant: Tenant, job_id: str) -> tuple[Job, bool]:
    """Returns (job, assemble_now). A queued job is cancelled at once; a running one is asked to
    stop at its workers' next chunk, keeping what they finished."""
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
    return job, assemble_now


def expire_deadline(session: Session, job: Job) -> bool:
    """Stop a job past its deadline; True when it must be assembled now (nothing running)."""
    if transition(
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
    error_file = session.get_one(File, job.error_file_id)
    input_file = session.get_one(File, job.input_file_id)
    failed_lines = {json.loads(raw)["line"] for raw in _lines(error_file.uri)}
    retry_input = create_file(
        session,
        tenant,
        FilePurpose.BATCH,
        f"{job.id}_retry.jsonl",
        _pick_lines(input_file.uri, failed_lines),
        limit=None,
    )
    retry = Job(
        tenant_id=tenant.id,
        type=job.type,
        status=JobStatus.QUEUED,
        model=job.model,
        model_version_id=job.model_version_id,
        device=job.device,
        queue=job.queue,
        input_file_id=retry_input.id,
        params=job.params,
        webhook=job.webhook,
        meta=job.meta,
        retry_of=job.id,
        usage={},
    )
    session.add(retry)
    session.flush()
    add_event(
        session,
        retry.id,
        "queued",
        {"queue": retry.queue, "retry_of": job.id, "items": len(failed_lines)},
    )
    return retry


def _lines(uri: str) -> Iterator[bytes]:
    with get_store().open(uri, "rb") as f:
        yield from (line for line in f if line.strip())


def _pick_lines(uri: str, numbers: set[int]) -> Iterator[bytes]:
    with get_store().open(uri, "rb") as f:
        for number, line in enumerate(f, start=1):
            if number in numbers:
                yield line if line.endswith(b"\n") else line + b"\n"


def jobs_past_deadline(session: Session, limit: int = 100) -> list[Job]:
    return list(
        session.scalars(
            select(Job)
            .where(
                Job.deadline_at < utcnow(), Job.status.in_([JobStatus.QUEUED, JobStatus.RUNNING])
            )
            .limit(limit)
        )
    )
