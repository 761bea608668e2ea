"""A batch job's end: its result files are registered and the job becomes `succeeded` (or
`cancelled`, keeping what was finished), in one transaction."""

from __future__ import annotations

import sys
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import func, insert, select, update
from sqlalchemy.orm import Session

from app.db import utcnow
from app.ids import new_id
from app.models import File, FilePurpose, Job, JobShard, JobStatus, ShardStatus
from app.services.files import register_file
from app.services.jobs import add_event, transition
from app.services.openai import is_batch
from app.services.shards import (
    DEADLINE_ERROR,
    ShardRange,
    active_shards,
    added_usage,
    closed_values,
    held_by,
    lease_until,
    past,
    whole_if_succeeded,
)
from app.storage import get_store

#: the end of a range of input lines read up to the end of the file (its count unknown)
TO_THE_END = sys.maxsize


@dataclass(frozen=True)
class Part:
    """A closed shard's part files (`parts_stem`) and the lines its close recorded in each:
    the assembly checks that it finds exactly these, or the shard's results were lost."""

    index: int
    stem: str
    outputs: int
    errors: int


@dataclass(frozen=True)
class Assembly:
    """What assembling a job's result files needs, read when its lease was taken."""

    tenant_id: str
    #: in input order, the part files of closed shards, and for an expired batch the ranges of
    #: the shards that never ran: their lines go to the error file as `batch_expired` (the
    #: shards that ran wrote their own unrun lines so)
    parts: list[Part | ShardRange]
    all_succeeded: bool
    input_uri: str | None = None  #: where an expired batch's unrun lines are read
    lines_uri: str | None = None  #: a retry's original line numbers (control.retry_lines_uri)
    counts_total: int = 0  #: items of the input: the lines of a succeeded job's two files


def claim_assembly(
    session: Session, job_id: str, owner: str, lease_seconds: float
) -> Assembly | None:
    """Take the job's lease to assemble it, once no shard of it is left to run; None when it
    is not ready, already ended, or someone else is assembling it right now."""
    row = session.execute(
        # A lease held by someone else is judged by the database's clock, as it was written.
        select(Job, func.coalesce(past(Job.lease_expires_at), True))
        .where(Job.id == job_id)
        .with_for_update(key_share=True, of=Job),
        execution_options={"populate_existing": True},
    ).one_or_none()
    if row is None:
        return None
    job, lapsed = row
    if (
        job.status not in (JobStatus.RUNNING, JobStatus.CANCELLING)
        or job.shards_total is None
        or active_shards(session, job_id) > 0
    ):
        return None
    if job.lease_owner is not None and not lapsed:
        return None
    job.lease_owner = owner
    job.lease_expires_at = lease_until(lease_seconds)
    job.assembling_at = job.assembling_at or utcnow()  # the first claim: a batch `finalizing`
    shards = list(
        session.scalars(select(JobShard).where(JobShard.job_id == job_id).order_by(JobShard.index))
    )
    expired = is_expired_batch(job)
    parts: list[Part | ShardRange] = []
    if expired and not shards:  # it expired before it started: every request is unrun
        parts.append(ShardRange(0, TO_THE_END, 0, 1))
    for shard in shards:
        if shard.parts_attempt is not None:
            # Shards closed before migration 0015 named their parts `<index>-<attempt>`.
            stem = shard.parts_stem or f"{shard.index:06d}-{shard.parts_attempt}"
            parts.append(Part(shard.index, stem, shard.succeeded, shard.failed))
        elif expired:
            parts.append(
                ShardRange(shard.start_item, shard.end_item, shard.start_offset, shard.start_line)
            )
    unrun = any(isinstance(part, ShardRange) for part in parts)
    return Assembly(
        tenant_id=job.tenant_id,
        parts=parts,
        all_succeeded=not unrun and all(s.status == ShardStatus.SUCCEEDED for s in shards),
        input_uri=session.scalar(select(File.uri).where(File.id == job.input_file_id))
        if unrun
        else None,
        counts_total=job.counts_total or 0,
        lines_uri=retry_lines_uri(job.tenant_id, job.id) if unrun and job.retry_of else None,
    )


def retry_lines_uri(tenant_id: str, job_id: str) -> str:
    """Where a retry's input lines' original numbers are kept: in the retry's own folder, so
    they go with the job (deleted or expired) and with nothing else."""
    return get_store().uri("tenants", tenant_id, "jobs", job_id, "input_lines")


def is_expired_batch(job: Job) -> bool:
    """A batch (OpenAI's format) stopping or stopped because its deadline passed: its unrun
    requests get `batch_expired` error lines."""
    return is_batch(job) and (job.error or {}).get("code") == DEADLINE_ERROR["code"]


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
        select(Job.status, Job.lease_owner, Job.output_file_id, Job.counts_total)
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
    if all_succeeded and outputs.lines + errors.lines != row.counts_total:
        return False  # never `succeeded` with a line missing (the caller checked already)
    out_file = register_file(
        session,
        tenant_id,
        FilePurpose.BATCH_OUTPUT,
        f"{job_id}_output.jsonl",
        outputs.uri,
        outputs.size,
        outputs.sha256,
        outputs.lines,
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
            errors.lines,
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


def end_with_only_shard(
    session: Session,
    shard: JobShard,
    owner: str,
    status: ShardStatus,
    usage: dict[str, float],
    outputs: ResultFile,
    errors: ResultFile,
    events: Sequence[tuple[str, dict[str, Any]]] = (),
    tokens: int = 0,
    finish_began: datetime | None = None,
    completion_tokens: int = 0,
) -> bool:
    """Close the one shard of a job and end the job, its part files being its result files.

    What `finish_shard` then `complete_job` do, under the same conditions, in the fewest round
    trips (a one-item job spends more time here than in its model): the job row is locked
    first, the shard closed only while `owner` holds it, the files registered and the job ended
    by `transition`, and the events flushed once. `events` go before the shard's own. True when
    the job ended (or had ended with these very files: a retried commit that went through).
    Its assembly is this finish: `assembling_at` is when it began (`finish_began`).
    """
    job_id = shard.job_id
    with session.no_autoflush:
        row = session.execute(
            select(Job.tenant_id, Job.status, Job.lease_owner, Job.output_file_id, Job.usage)
            .where(Job.id == job_id)
            .with_for_update(key_share=True)
        ).one_or_none()
        if row is None:
            return False
        if row.output_file_id is not None:
            done_uri = session.scalar(select(File.uri).where(File.id == row.output_file_id))
            return done_uri == outputs.uri
        closed = session.execute(
            update(JobShard)
            .where(
                *held_by(shard.id, owner), *whole_if_succeeded(status, outputs.lines + errors.lines)
            )
            .values(
                **closed_values(shard, status, owner, tokens, completion_tokens),
                succeeded=outputs.lines,
                failed=errors.lines,
            )
            .execution_options(synchronize_session=False)
        )
        if closed.rowcount != 1:  # type: ignore[attr-defined]
            return False
        for type_, data in [*events, (f"shard_{status}", {"shard": shard.index})]:
            add_event(session, job_id, type_, data, flush=False)
        # The job's only shard: its tokens are the job's.
        total = added_usage(row.usage, usage, tokens, completion_tokens)
        all_succeeded = status == ShardStatus.SUCCEEDED
        ending = row.lease_owner is None and (
            row.status == JobStatus.CANCELLING
            or (all_succeeded and row.status == JobStatus.RUNNING)
        )
        if not ending:  # the shard is closed, the job is not the farm's to end here
            session.execute(
                update(Job)
                .where(Job.id == job_id)
                .values(usage=total, counts_succeeded=outputs.lines, counts_failed=errors.lines)
            )
            session.flush()
            return False
        files = [(outputs, FilePurpose.BATCH_OUTPUT, "output")]
        if errors.lines:
            files.append((errors, FilePurpose.BATCH_ERROR, "errors"))
        ids = [new_id("file") for _ in files]
        session.execute(
            insert(File),
            [
                {
                    "id": file_id,
                    "tenant_id": row.tenant_id,
                    "purpose": purpose,
                    "filename": f"{job_id}_{name}.jsonl",
                    "uri": result.uri,
                    "bytes": result.size,
                    "sha256": result.sha256,
                    "items": result.lines,
                    "created_at": utcnow(),
                }
                for file_id, (result, purpose, name) in zip(ids, files, strict=True)
            ],
        )
        values: dict[str, Any] = {
            "output_file_id": ids[0],
            "error_file_id": ids[1] if len(ids) > 1 else None,
            "counts_succeeded": outputs.lines,
            "counts_failed": errors.lines,
            "usage": total,
            "assembling_at": finish_began or utcnow(),
        }
        if all_succeeded:
            values["error"] = None  # every item is done, whatever came after the last chunk
        return transition(
            session,
            job_id,
            [JobStatus.RUNNING, JobStatus.CANCELLING] if all_succeeded else [JobStatus.CANCELLING],
            JobStatus.SUCCEEDED if all_succeeded else JobStatus.CANCELLED,
            event_data={"succeeded": outputs.lines, "failed": errors.lines},
            flush_event=False,  # with the shard's events, when the transaction commits
            **values,
        )
