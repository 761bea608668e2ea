"""A batch job's end: its result files are registered and the job becomes `succeeded` (or
`cancelled`, keeping what was finished), in one transaction."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session

from app.models import File, FilePurpose, Job, JobStatus
from app.services.files import register_file
from app.services.jobs import transition


@dataclass(frozen=True)
class ResultFile:
    """A JSONL file the farm wrote, already whole in the store."""

    uri: str
    size: int
    sha256: str
    lines: int


def complete_job(
    session: Session,
    job_id: str,
    tenant_id: str,
    outputs: ResultFile,
    errors: ResultFile,
    all_succeeded: bool,
    lease_owner: str | None,
) -> bool:
    """Point the job at its files and end it. False, with nothing written, unless the job is
    running or cancelling under `lease_owner` (None: no lease; the caller finished its last
    shard in this transaction); True too, writing nothing, when the job already points at these
    very files (a retried commit that had gone through). The job row is locked first, so the
    answer holds until commit.
    """
    row = session.execute(
        select(Job.status, Job.lease_owner, Job.output_file_id)
        .where(Job.id == job_id)
        .with_for_update(key_share=True)  # as lock_job: the job row first
    ).one_or_none()
    if row is None:
        return False
    if row.output_file_id is not None:
        # Ended already: by this very attempt when its commit went through but the answer was
        # lost (db_retry ran it again), so its files must stay; by another one otherwise.
        done_uri = session.scalar(select(File.uri).where(File.id == row.output_file_id))
        return done_uri == outputs.uri
    if row.lease_owner != lease_owner:
        return False
    if row.status not in (JobStatus.RUNNING, JobStatus.CANCELLING):
        return False
    if not all_succeeded and row.status != JobStatus.CANCELLING:
        return False
    out_file = register_file(
        session,
        tenant_id,
        FilePurpose.BATCH_OUTPUT,
        f"{job_id}_output.jsonl",
        outputs.uri,
        outputs.size,
        outputs.sha256,
    )
    err_file_id = None
    if errors.lines:
        err_file_id = register_file(
            session,
            tenant_id,
            FilePurpose.BATCH_ERROR,
            f"{job_id}_errors.jsonl",
            errors.uri,
            errors.size,
            errors.sha256,
        ).id
    # The files are the truth: every item is in exactly one of them.
    values: dict[str, Any] = {
        "output_file_id": out_file.id,
        "error_file_id": err_file_id,
        "counts_succeeded": outputs.lines,
        "counts_failed": errors.lines,
        "lease_owner": None,
        "lease_expires_at": None,
    }
    counts = {"succeeded": outputs.lines, "failed": errors.lines}
    if all_succeeded:
        # Every item is done, even if a cancel or the deadline came after the last chunk.
        return transition(
            session,
            job_id,
            [JobStatus.RUNNING, JobStatus.CANCELLING],
            JobStatus.SUCCEEDED,
            event_data=counts,
            error=None,
            **values,
        )
    return transition(
        session, job_id, [JobStatus.CANCELLING], JobStatus.CANCELLED, event_data=counts, **values
    )
