"""An OpenAI batch seen from its job: its status in OpenAI's words and the events it sends.
Below the job service, which sends a batch's events when its job moves, and the OpenAI
service, which answers batches (app/services/openai.py)."""

from __future__ import annotations

import time
import uuid
from typing import Any

from app.models import Job, JobStatus
from app.schemas import openai as oa


def batch_status(job: Job) -> oa.BatchStatus:
    if job.status == JobStatus.QUEUED:
        return "validating"
    if job.status == JobStatus.RUNNING:
        # Its results are being put together (or every line is answered and they are about to
        # be): the job's assembly, which a job of one shard does within its shard's finish.
        done = job.counts_succeeded + job.counts_failed
        assembling = job.assembling_at is not None
        ready = job.counts_total and done >= job.counts_total
        return "finalizing" if assembling or ready else "in_progress"
    if job.status == JobStatus.SUCCEEDED:
        return "completed"
    if job.status == JobStatus.CANCELLED and (job.error or {}).get("code") == "deadline_exceeded":
        return "expired"
    if job.status in (JobStatus.FAILED, JobStatus.CANCELLING, JobStatus.CANCELLED):
        return job.status.value if isinstance(job.status, JobStatus) else job.status  # type: ignore[return-value]
    return "in_progress"


def batch_event(job: Job, job_event: str) -> tuple[str, dict[str, Any]] | None:
    """(type, body) of the OpenAI event a batch sends for its job's event, if any: the shape
    of OpenAI's webhooks, `{"object": "event", "id", "type", "created_at", "data": {"id"}}`.
    A batch asking for only one of batch.cancelled and batch.expired gets both."""
    kind = {"job.succeeded": "completed", "job.failed": "failed", "job.cancelled": "cancelled"}
    if job_event not in kind:
        return None
    event = "batch." + (batch_status(job) if job_event == "job.cancelled" else kind[job_event])
    body = {
        "object": "event",
        "id": "evt_" + uuid.uuid4().hex,
        "type": event,
        "created_at": int(time.time()),
        "data": {"id": job.id},
    }
    return event, body
