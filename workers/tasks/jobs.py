"""Thin Celery tasks: take a job id, run it with workers/runtime, record through app/services."""

from __future__ import annotations

from celery import Task

from app.dispatch import TASK_RUN_JOB
from workers.celery_app import celery_app
from workers.tasks.inference import run_inference_job


@celery_app.task(name=TASK_RUN_JOB, bind=True)
def run_job(self: Task, job_id: str) -> None:
    run_inference_job(job_id, worker=self.request.hostname or "unknown")
