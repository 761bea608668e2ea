"""The workers' Celery app: queues, reliability settings and task modules, all from Settings."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, ParamSpec, TypeVar

from celery import Celery
from kombu.entity import Queue

from app.broker.dispatch import QUEUES, celery_config
from app.config import get_settings


def create_celery() -> Celery:
    settings = get_settings()
    app = Celery("modelfarm", include=["workers.tasks.jobs"])
    app.conf.update(celery_config(settings))
    app.conf.update(
        # Durable queues and persistent messages (kombu's defaults, said here): on RabbitMQ a
        # broker restart keeps what was published. (kombu's Queue has no annotations.)
        task_queues=[Queue(name, durable=True) for name in QUEUES],  # type: ignore[no-untyped-call]
        task_default_queue="cpu",
        # Never lose a task to a dying worker: acknowledge after the work, give the message
        # back when the child process is killed, and take one message at a time.
        task_acks_late=True,
        task_reject_on_worker_lost=True,
        worker_prefetch_multiplier=1,
        worker_send_task_events=True,
        # A new pool child loads its models before it says it is up (seconds, not Celery's 4).
        worker_proc_alive_timeout=300,
        # Every task is guarded: past the soft limit it stops and its shard is tried again.
        task_soft_time_limit=settings.task_soft_time_limit,
        task_time_limit=settings.task_time_limit,
        worker_hijack_root_logger=False,
        worker_redirect_stdouts=False,
    )
    return app


celery_app = create_celery()

P = ParamSpec("P")
R = TypeVar("R")


def task(**options: Any) -> Callable[[Callable[P, R]], Callable[P, R]]:
    """`@celery_app.task(...)` with its types (Celery has none): the farm reaches its tasks only
    through messages (app/broker/dispatch.py), never through the Task object, so a task keeps
    its function's own signature for the type checker."""
    decorate: Callable[[Callable[P, R]], Callable[P, R]] = celery_app.task(**options)
    return decorate


import workers.signals  # noqa: E402,F401 - connects the worker signal handlers
