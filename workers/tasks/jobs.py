"""Thin Celery tasks: take ids, run them with workers/tasks + runtime, record through services.

Arguments always start with the job id (or, for a model validation, the version id), so
Flower shows what every task belongs to.
"""

from __future__ import annotations

from celery import Task

from app.broker.dispatch import (
    TASK_ASSEMBLE_JOB,
    TASK_ASSEMBLE_JOB_FORMER,
    TASK_DELIVER_WEBHOOK,
    TASK_PLAN_JOB,
    TASK_RUN_SHARD,
    TASK_VALIDATE_MODEL,
)
from app.config import get_settings
from workers.celery_app import task
from workers.tasks.assemble import assemble_job
from workers.tasks.inference import plan_job, run_shard
from workers.tasks.validation import validate_version
from workers.tasks.webhooks import deliver

_VALIDATION_SECONDS = get_settings().model_validation_seconds


@task(name=TASK_PLAN_JOB, bind=True)
def plan_job_task(self: Task, job_id: str) -> None:
    plan_job(job_id, worker=self.request.hostname or "unknown")


@task(name=TASK_RUN_SHARD, bind=True)
def run_shard_task(self: Task, job_id: str, index: int) -> None:
    run_shard(job_id, index, worker=self.request.hostname or "unknown")


@task(name=TASK_ASSEMBLE_JOB)
def assemble_job_task(job_id: str) -> None:
    assemble_job(job_id)


@task(name=TASK_ASSEMBLE_JOB_FORMER)
def assemble_job_former_name(job_id: str) -> None:
    """Messages sent as `modelfarm.finalize_job` before the upgrade still assemble their job."""
    assemble_job(job_id)


@task(name=TASK_DELIVER_WEBHOOK)
def deliver_webhook_task(job_id: str, delivery_id: str) -> None:
    deliver(job_id, delivery_id)


# Its own time limits: an upload that takes too long to check is stopped well before a shard's
# limit, and its version's lease (MODEL_VALIDATION_SECONDS + a margin) outlives the attempt.
@task(
    name=TASK_VALIDATE_MODEL,
    soft_time_limit=_VALIDATION_SECONDS,
    time_limit=_VALIDATION_SECONDS + 30,
)
def validate_model_task(version_id: str) -> None:
    validate_version(version_id)
