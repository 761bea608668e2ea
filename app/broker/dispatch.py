"""The only broker-aware module in app/: hand a job id to the queue of its pool.

The API publishes after the job is committed. A failed publish loses nothing: the job stays
`queued` with no `dispatched_at`, and the sweeper publishes it again later.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from functools import lru_cache
from typing import Any

from celery import Celery

from app.broker import scan
from app.broker.messages import task_message
from app.broker.scan import TaskKey as TaskKey  # the sweeper names it through here
from app.config import Settings, get_settings

log = logging.getLogger(__name__)

# Task names and arguments are chosen so that Flower shows the job id of every task.
TASK_PLAN_JOB = "modelfarm.plan_job"  # [job_id]: split the input into shards
TASK_RUN_SHARD = "modelfarm.run_shard"  # [job_id, shard_index]
TASK_ASSEMBLE_JOB = "modelfarm.assemble_job"  # [job_id]: assemble the result files
# The same task's name before it was called what it does; its workers still take messages sent
# under it by a farm not yet upgraded (workers/tasks/jobs.py).
TASK_ASSEMBLE_JOB_FORMER = "modelfarm.finalize_job"
TASK_DELIVER_WEBHOOK = "modelfarm.deliver_webhook"  # [job_id, delivery_id]: one attempt
TASK_VALIDATE_MODEL = "modelfarm.validate_model"  # [version_id]: check, unpack, probe an upload
# Validation runs on the CPU pool: an upload is checked on the cores that are cheap to lose, and
# the probe loads the model on the CPU whatever device its jobs will ask for.
VALIDATION_QUEUE = "cpu"
WEBHOOK_QUEUE = "webhooks"  # its own workers, so slow receivers never hold up inference
QUEUES = ("cpu", "gpu", WEBHOOK_QUEUE)
#: Two message priorities. On Redis, kombu keeps one list per priority step (`cpu` for step
#: 0, `cpu\x06\x163` for step 3) and a worker takes from the lowest step first, so a `high`
#: message goes before every `normal` one already waiting. `high`: a `high` job's plan, and a
#: shard the scheduler released in the slot of its tenant's recalled one; every other job and
#: shard message is `normal` (a low job's too: a step below would wait behind every other
#: tenant's normal shards, which a backlog keeps coming). Messages of other tasks (assembly,
#: validation, webhooks, the sweeper's resends) carry none and share step 0: they are short,
#: or waited already. RabbitMQ ignores the number on queues declared without `x-max-priority`
#: (ours, so that queues declared by an earlier farm stay valid): there the broker stays first
#: in, first out (docs/decisions/0010).
REDIS_PRIORITY = {"high": 0, "normal": 3}
# The broker holds a retry as a countdown only when it is this close; later ones wait in
# PostgreSQL for the sweeper (a countdown past the visibility timeout would be redelivered).
MAX_COUNTDOWN_SECONDS = 600.0


def is_redis(url: str) -> bool:
    return url.startswith(("redis://", "rediss://", "unix://", "redis+socket://"))


def _transport_options(settings: Settings, url: str) -> dict[str, Any]:
    if is_redis(url):
        return {
            # With acks_late a task running longer than this is delivered again; the job's
            # conditional transitions make that harmless, the lease (not this) finds lost work.
            "visibility_timeout": settings.visibility_timeout_seconds,
            "socket_timeout": 5,
            "socket_connect_timeout": 5,
        }
    # RabbitMQ: a publish returns once the broker has the message (publisher confirms), so a
    # job the API called dispatched is on a durable queue, not in a socket buffer.
    return {"confirm_publish": True, "connect_timeout": 5}


def celery_config(settings: Settings) -> dict[str, Any]:
    """Settings shared by the producer here and the workers' Celery app."""
    url = settings.require_broker_url()
    return {
        "broker_url": url,
        "broker_transport_options": _transport_options(settings, url),
        "broker_connection_retry_on_startup": True,
        "task_serializer": "json",
        "accept_content": ["json"],
        "task_ignore_result": True,  # outcomes live in PostgreSQL, not in a result backend
        # No `task-sent` event per message: building and publishing it cost twice the message
        # itself (0.9 ms of 1.4 ms per job, measured). Flower shows a task from the moment a
        # worker receives it, and the queue lengths before that (its Broker page).
        "task_send_sent_event": False,
    }


@lru_cache
def producer() -> Celery:
    app = Celery("modelfarm-api", set_as_current=False)
    app.conf.update(celery_config(get_settings()))
    return app


def publish(
    task: str,
    args: list[Any],
    queue: str,
    countdown: float | None = None,
    priority: str | None = None,
) -> bool:
    """True when the broker took the message; False (logged) when it did not. `priority` is
    the message's (`high` or `normal`, REDIS_PRIORITY) for a job's plan and shards; None for
    other tasks."""
    try:
        producer().send_task(
            task,
            args=args,
            queue=queue,
            retry=False,
            countdown=countdown,
            priority=_broker_priority(priority),
        )
    except Exception:  # the broker being down must never fail a request or a sweep
        log.warning("could not publish %s%s to queue %s", task, args, queue, exc_info=True)
        return False
    return True


def _broker_priority(priority: str | None) -> int | None:
    if priority is None or not is_redis(producer().conf.broker_url):
        return None
    return REDIS_PRIORITY[str(priority)]


def _plan_priority(job_priority: str) -> str:
    """A job's plan message: `high` for a high job, else `normal`."""
    return "high" if job_priority == "high" else "normal"


def publish_job(job_id: str, queue: str, job_priority: str = "normal") -> bool:
    return publish(TASK_PLAN_JOB, [job_id], queue, priority=_plan_priority(job_priority))


def publish_shard(job_id: str, index: int, queue: str, priority: str = "normal") -> bool:
    """A shard message; `priority` is the message's (scheduler.Released), not the job's."""
    return publish(TASK_RUN_SHARD, [job_id, index], queue, priority=priority)


def publish_jobs(jobs: Sequence[tuple[str, str, str]]) -> list[str]:
    """Plan messages for many jobs, (job id, queue, job priority); answers the ids of those the
    broker may not have taken (logged), so the sweeper sends them.

    On Redis they are built here (app/broker/messages.py) and pushed in one round trip, a
    command per queue; on any other broker they go through Celery one at a time.
    """
    if not jobs:
        return []
    client = _redis_producer()
    if client is None:
        return [job[0] for job in jobs if not publish_job(*job)]
    by_list: dict[str, list[str]] = {}
    for job_id, queue, job_priority in jobs:
        step = REDIS_PRIORITY[_plan_priority(job_priority)]
        # kombu's list for the step: the queue's own for 0, "<queue>\x06\x16<step>" else.
        key = f"{queue}{scan.PRIORITY_SEP}{step}" if step else queue
        message = task_message(TASK_PLAN_JOB, [job_id], queue, step)
        by_list.setdefault(key, []).append(message)
    try:
        with client.pipeline(transaction=False) as pipe:
            for key, messages in by_list.items():
                # LPUSH of several puts the last leftmost, and workers take from the right:
                # they run in the order given, as separate pushes would.
                pipe.lpush(key, *messages)
            pipe.execute()
    except Exception:  # the broker being down must never fail a request
        log.warning("could not publish %d plan messages", len(jobs), exc_info=True)
        return [job[0] for job in jobs]
    return []


_redis_clients: dict[str, Any] = {}


def _redis_producer() -> Any | None:
    """A plain Redis client for the broker when it is one kombu would reach the same way (a
    single redis://, rediss:// or unix:// URL); None otherwise."""
    url = get_settings().require_broker_url()
    if not url.startswith(("redis://", "rediss://", "unix://")) or ";" in url:
        return None
    client = _redis_clients.get(url)
    if client is None:
        import redis
        from redis.backoff import NoBackoff
        from redis.retry import Retry

        options = _transport_options(get_settings(), url)
        client = redis.Redis.from_url(
            url,
            socket_timeout=options["socket_timeout"],
            socket_connect_timeout=options["socket_connect_timeout"],
            # Once more on a broken connection (a pooled socket from before a Redis restart),
            # never after a timeout: a broker that does not answer costs a request 5 s, not 20.
            retry=Retry(NoBackoff(), 1, supported_errors=(redis.ConnectionError,)),
        )
        _redis_clients[url] = client
    return client


def publish_validation(version_id: str) -> bool:
    return publish(TASK_VALIDATE_MODEL, [version_id], VALIDATION_QUEUE)


def publish_delivery(job_id: str, delivery_id: str, countdown: float | None = None) -> bool:
    return publish(TASK_DELIVER_WEBHOOK, [job_id, delivery_id], WEBHOOK_QUEUE, countdown)


def live_task_keys(settings: Settings) -> set[TaskKey] | None:
    """Task messages the broker still holds, or None where it cannot be looked into."""
    url = settings.require_broker_url()
    if not is_redis(url):
        return None
    return scan.live_task_keys(url, QUEUES, settings.lease_seconds)


def broker_inspectable(settings: Settings) -> bool:
    """Whether the sweeper can list the messages the broker holds (Redis, not RabbitMQ)."""
    return is_redis(settings.require_broker_url())


def stale_after_seconds(settings: Settings) -> float:
    """How long after publishing the sweeper sends again queued work it cannot see the broker
    hold. Redis is looked into, so there this only covers a scan that gave up (the visibility
    timeout). RabbitMQ is not: there, work not started this long after its message was
    published is published again. Duplicates are harmless (every transition is conditional);
    the cost is one extra message per waiting item and period while a backlog lasts."""
    if broker_inspectable(settings):
        return float(settings.visibility_timeout_seconds)
    return settings.broker_redeliver_seconds


def broker_reachable() -> bool:
    try:
        with producer().connection_for_write() as conn:
            conn.ensure_connection(max_retries=1, timeout=2)
        return True
    except Exception:
        return False


def worker_answers(name: str, timeout: float = 5.0) -> bool:
    """Whether the Celery worker called `name` (cpu@host) answers a ping over the broker."""
    try:
        replies = producer().control.ping(destination=[name], timeout=timeout)
    except Exception:
        return False
    return any(name in reply for reply in replies)


def queue_depths(queues: tuple[str, ...] = QUEUES) -> dict[str, int] | None:
    """Messages waiting in each queue (not those a worker holds), asked of the broker through
    kombu so it works for any transport; None when the broker does not answer. A queue the
    broker does not know yet (Redis drops an empty list) holds nothing."""
    try:
        with producer().connection_for_write() as conn:
            conn.ensure_connection(max_retries=1, timeout=2)
            depths = {}
            for queue in queues:
                channel = conn.channel()
                try:
                    depths[queue] = channel.queue_declare(queue=queue, passive=True).message_count
                except Exception:  # passive declare of an unknown queue: nothing waits there
                    depths[queue] = 0
                finally:
                    channel.close()
            return depths
    except Exception:
        log.warning("could not read queue depths", exc_info=True)
        return None
