from __future__ import annotations

import enum
from datetime import datetime
from typing import Any

from sqlalchemy import (
    BigInteger,
    DateTime,
    ForeignKey,
    Identity,
    Index,
    Integer,
    String,
    UniqueConstraint,
    text,
)
from sqlalchemy.orm import Mapped, mapped_column

from app.db import Base, JSONType, utcnow
from app.ids import new_id


class JobType(enum.StrEnum):
    INFERENCE = "inference"  #: batch inference over input items
    TRAINING = "training"  #: fit a model and register a new version


class JobStatus(enum.StrEnum):
    QUEUED = "queued"  #: committed, waiting for a worker
    RUNNING = "running"  #: a worker holds it
    CANCELLING = "cancelling"  #: cancel asked; the worker stops at its next check
    SUCCEEDED = "succeeded"  #: every input item has one output or error line
    FAILED = "failed"  #: the job itself could not run; `error` says why
    CANCELLED = "cancelled"  #: stopped on request; finished items are kept

    @property
    def terminal(self) -> bool:
        return self in TERMINAL_STATUSES


TERMINAL_STATUSES = frozenset({JobStatus.SUCCEEDED, JobStatus.FAILED, JobStatus.CANCELLED})


class JobPriority(enum.StrEnum):
    HIGH = "high"  #: its shards are released before the tenant's normal and low work
    NORMAL = "normal"  #: the default
    LOW = "low"  #: released only when the tenant has nothing else waiting in the pool


class Job(Base):
    __tablename__ = "jobs"
    # (tenant_id, id): a tenant's newest jobs come straight off the index, however many it has.
    __table_args__ = (
        UniqueConstraint("tenant_id", "idempotency_key"),
        Index("ix_jobs_tenant_id_id", "tenant_id", "id"),
        # Each tenant's best running job in a pool, by index probes (migration 0018).
        Index(
            "ix_jobs_running_by_queue_tenant",
            "queue",
            "tenant_id",
            "priority",
            "created_at",
            "id",
            postgresql_where=text("status = 'running'"),
        ),
    )

    id: Mapped[str] = mapped_column(String(40), primary_key=True, default=lambda: new_id("job"))
    tenant_id: Mapped[str] = mapped_column(ForeignKey("tenants.id", ondelete="CASCADE"))
    type: Mapped[str] = mapped_column(String(20))
    status: Mapped[str] = mapped_column(String(20), default=JobStatus.QUEUED, index=True)
    model: Mapped[str | None] = mapped_column(String(140))  # resolved "name@version"
    model_version_id: Mapped[str | None] = mapped_column(
        ForeignKey("model_versions.id", ondelete="SET NULL")
    )
    device: Mapped[str] = mapped_column(String(10))
    queue: Mapped[str] = mapped_column(String(40))
    # Orders the tenant's own work only: tenants share a pool equally whatever they ask for.
    priority: Mapped[str] = mapped_column(
        String(10), default=JobPriority.NORMAL, server_default=JobPriority.NORMAL
    )
    input_file_id: Mapped[str | None] = mapped_column(ForeignKey("files.id"))
    output_file_id: Mapped[str | None] = mapped_column(ForeignKey("files.id"))
    error_file_id: Mapped[str | None] = mapped_column(ForeignKey("files.id"))
    params: Mapped[dict[str, Any]] = mapped_column(JSONType, default=dict)
    webhook: Mapped[dict[str, Any] | None] = mapped_column(JSONType)
    meta: Mapped[dict[str, str]] = mapped_column("metadata", JSONType, default=dict)
    # Items of the input (training jobs: steps, app/services/training.py steps_as_counts).
    counts_total: Mapped[int] = mapped_column(Integer, default=0)
    counts_succeeded: Mapped[int] = mapped_column(Integer, default=0)
    counts_failed: Mapped[int] = mapped_column(Integer, default=0)
    result: Mapped[dict[str, Any] | None] = mapped_column(JSONType)
    error: Mapped[dict[str, str] | None] = mapped_column(JSONType)
    attempts: Mapped[int] = mapped_column(Integer, default=0)
    usage: Mapped[dict[str, float]] = mapped_column(JSONType, default=dict)
    idempotency_key: Mapped[str | None] = mapped_column(String(255))
    # The Celery hostname (`cpu@host`) of the worker that took it last.
    worker: Mapped[str | None] = mapped_column(String(255))
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)
    dispatched_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    started_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    finished_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    cancel_requested_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    deadline_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    # When its results began to be put together (a batch's `finalizing_at`): the first claim of
    # its assembly, or the start of the finish of a job of one shard.
    assembling_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    retry_of: Mapped[str | None] = mapped_column(ForeignKey("jobs.id", ondelete="SET NULL"))
    # Set once the input is split; NULL while the job is queued or being planned.
    shards_total: Mapped[int | None] = mapped_column(Integer)
    # The job-level lease covers planning and assembling; shards hold their own leases.
    lease_owner: Mapped[str | None] = mapped_column(String(120))
    lease_expires_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    # Training: what is trained, the name its new version gets, the latest progress
    # ({"step", "steps_total", "epoch", "epochs", "loss"}).
    framework: Mapped[str | None] = mapped_column(String(40))
    output_model: Mapped[str | None] = mapped_column(String(100))
    progress: Mapped[dict[str, Any] | None] = mapped_column(JSONType)
    # Why a queued job is not starting (no GPU worker); cleared when a worker takes it.
    notice: Mapped[str | None] = mapped_column(String(500))
    # Held back by its tenant's max_running_jobs: its plan message was taken and not sent
    # again; it is, when one of the tenant's running jobs ends (app/services/admission.py).
    held_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    # When the last `job.progress` webhook was queued: at most one a second per job.
    progress_notified_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))

    @property
    def is_terminal(self) -> bool:
        return JobStatus(self.status).terminal


class ShardStatus(enum.StrEnum):
    QUEUED = "queued"  #: waiting for a worker (or re-dispatched after a lost lease)
    RUNNING = "running"  #: a worker holds its lease
    SUCCEEDED = "succeeded"  #: every item of its range is in its part files
    CANCELLED = "cancelled"  #: stopped by a cancel or deadline; finished items kept
    FAILED = "failed"  #: gave up after the maximum number of attempts


class JobShard(Base):
    """A range of a batch job's input items, run as one task and written to its own part files.

    A crash repeats at most the shard that was running: its part files are rewritten from the
    start of its range, never appended to, so no item can appear twice.
    """

    __tablename__ = "job_shards"
    __table_args__ = (
        UniqueConstraint("job_id", "index"),
        Index(
            "ix_job_shards_queued_running",
            "job_id",
            "index",
            postgresql_where=text("status IN ('queued', 'running')"),
        ),
        # Released and not finished: a pool's window counted without reading its backlog.
        Index(
            "ix_job_shards_in_flight",
            "job_id",
            postgresql_where=text("status IN ('queued', 'running') AND dispatched_at IS NOT NULL"),
        ),
    )

    id: Mapped[int] = mapped_column(BigInteger, Identity(), primary_key=True)
    job_id: Mapped[str] = mapped_column(ForeignKey("jobs.id", ondelete="CASCADE"), index=True)
    index: Mapped[int] = mapped_column(Integer)
    start_item: Mapped[int] = mapped_column(Integer)  # 0-based, inclusive
    end_item: Mapped[int] = mapped_column(Integer)  # exclusive
    start_offset: Mapped[int] = mapped_column(BigInteger)  # byte offset of its first line
    start_line: Mapped[int] = mapped_column(Integer)  # 1-based line number there
    status: Mapped[str] = mapped_column(String(20), default=ShardStatus.QUEUED, index=True)
    attempts: Mapped[int] = mapped_column(Integer, default=0)
    succeeded: Mapped[int] = mapped_column(Integer, default=0)
    failed: Mapped[int] = mapped_column(Integer, default=0)
    # Tokens its items used (text models), written once, by the attempt that closes the shard:
    # what the model read (prompts, for text generation) and what it generated.
    tokens: Mapped[int] = mapped_column(BigInteger, default=0, server_default="0")
    completion_tokens: Mapped[int] = mapped_column(BigInteger, default=0, server_default="0")
    lease_owner: Mapped[str | None] = mapped_column(String(120))
    lease_expires_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    # Set when the scheduler releases the shard to the broker (app/services/scheduler.py): a
    # queued shard without it waits for the window and has no message to lose.
    dispatched_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    finished_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    last_error: Mapped[str | None] = mapped_column(String(1000))
    # The attempt whose part files are whole (set when a worker closes the shard); NULL: none.
    parts_attempt: Mapped[int | None] = mapped_column(Integer)
    # How that attempt's part files are named (`shards.parts_stem`); NULL on shards closed
    # before migration 0015, whose parts are named `<index>-<attempt>`.
    parts_stem: Mapped[str | None] = mapped_column(String(64))


class JobEvent(Base):
    """Append-only: one row per transition and per notable step of a job."""

    __tablename__ = "job_events"

    id: Mapped[int] = mapped_column(BigInteger, Identity(), primary_key=True)
    job_id: Mapped[str] = mapped_column(ForeignKey("jobs.id", ondelete="CASCADE"), index=True)
    type: Mapped[str] = mapped_column(String(40))
    data: Mapped[dict[str, Any]] = mapped_column(JSONType, default=dict)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)


# A tenant's unfinished jobs, which its queued-jobs quota counts on each submission
# (migration 0008): only those rows are in it, however many finished jobs the tenant keeps.
ACTIVE_STATUSES = (JobStatus.QUEUED, JobStatus.RUNNING, JobStatus.CANCELLING)
Index(
    "ix_jobs_tenant_id_active",
    Job.tenant_id,
    postgresql_where=Job.status.in_([s.value for s in ACTIVE_STATUSES]),
)
