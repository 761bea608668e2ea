"""The sweeper: finds work that nobody will finish and sends it again.

PostgreSQL is the source of truth and Redis may lose messages, so every SWEEP_INTERVAL_SECONDS
one sweeper (a PostgreSQL advisory lock; start as many as you like) does, in order:
1. stops jobs past their deadline;
2. gives shards whose lease ran out (a worker died or hung) another attempt, or fails the job
   once a shard used up MAX_ATTEMPTS;
3. re-publishes queued jobs and released shards that the broker no longer holds (never
   published, flushed, or taken by a consumer that died), and jobs whose planner died; then
   sends the held jobs that their tenant's max_running_jobs lets start now (a releaser that
   died, app/services/admission.py), and releases shards into any pool's window that has
   room (app/services/scheduler.py);
4. assembles jobs whose shards are all closed but that nobody is assembling;
5. takes back webhook deliveries whose worker died mid-attempt, and sends deliveries that are
   due but have no message (lost, or a retry too far off to leave with the broker);
6. publishes again the validation of model versions stuck in `validating`: never published,
   message lost, or the attempt's lease ran out (its worker died).

This module loops, schedules and decides what to publish again; it builds no query (the
layering test holds it to that). What it reads and writes is in app/services (sweeping.py for
what only the sweeper does), what the broker still holds comes through app/broker/dispatch.py.
"""

from __future__ import annotations

import logging
import time
from datetime import timedelta
from typing import Any

from app.broker.dispatch import (
    TASK_ASSEMBLE_JOB,
    TASK_DELIVER_WEBHOOK,
    TASK_PLAN_JOB,
    TASK_RUN_SHARD,
    TASK_VALIDATE_MODEL,
    VALIDATION_QUEUE,
    WEBHOOK_QUEUE,
    TaskKey,
    broker_inspectable,
    live_task_keys,
    publish,
    stale_after_seconds,
)
from app.config import get_settings
from app.db import get_engine
from app.services import (
    admission,
    control,
    heartbeats,
    scheduler,
    sweeping,
    validation,
    webhooks,
)
from app.services.files import expire_uploads, remove_folder, remove_object
from app.services.jobs import expire_results
from app.unit_of_work import session_scope

log = logging.getLogger(__name__)

SHARD_QUEUES = ("cpu", "gpu")  # the pools whose shards the scheduler releases
SWEEPER_LOCK = 0x6D66_7377  # "mfsw": the advisory lock only one sweeper holds
BATCH = 500  # rows looked at per step and sweep
GRACE = timedelta(seconds=2)  # the API and the workers publish just after they commit

Send = tuple[str, list[Any], str]  # (task, args, queue)


def sweep_once() -> dict[str, int]:
    """One pass; returns how many of each kind of thing it did (for logs and tests)."""
    settings = get_settings()
    done = {
        "deadlines": 0,
        "expired": 0,
        "failed": 0,
        "republished": 0,
        "released": 0,
        "assembled": 0,
        "deliveries": 0,
        "validations": 0,
        "results_expired": 0,
    }
    sends: list[Send] = []
    with session_scope() as session:
        for job in control.jobs_past_deadline(session, BATCH):
            done["deadlines"] += 1
            if control.expire_deadline(session, job):
                sends.append((TASK_ASSEMBLE_JOB, [job.id], job.queue))
    with session_scope() as session:
        sweeping.close_shards_of_stopping_jobs(session, BATCH)
        leases = sweeping.expire_shard_leases(session, settings.max_attempts, BATCH)
    sends += [(TASK_RUN_SHARD, [job_id, i], queue) for job_id, i, queue in leases.resend]
    done["expired"], done["failed"] = len(leases.resend), leases.failed
    live = live_task_keys(settings)
    stale = stale_after_seconds(settings)  # without a view into the broker (RabbitMQ)
    # On a broker that cannot be looked into, a message sent less than `stale` ago counts as
    # still on its way, so waiting work is not published again at every sweep.
    recent = None if broker_inspectable(settings) else stale
    with session_scope() as session:
        sends += _lost_messages(session, live, stale)
        sends += _dead_planners(session, settings.max_attempts, live, recent)
        sends += [
            (TASK_ASSEMBLE_JOB, [job_id], queue)
            for job_id, queue in sweeping.unassembled_jobs(session, BATCH)
        ]
    with session_scope() as session:  # held jobs that may start: a releaser died, or was late
        holding = admission.holding_tenants(session, BATCH)
    for tenant_id in holding:  # each in its own unit of work, which sends the plan messages
        with session_scope() as session:
            done["republished"] += len(admission.release(session, tenant_id))
    for queue in SHARD_QUEUES:  # the safety net: a window left unfilled is filled here
        # Sent once this commits, marked released already: a failed publish is found by the
        # next scan.
        with session_scope() as session:
            window = scheduler.window_size(
                session, queue, settings.scheduler_window, settings.processes_per_worker(queue)
            )
            done["released"] += len(scheduler.release(session, queue, window))
    with session_scope() as session:
        sends += _deliveries(session, live, recent)
        sends += _stuck_validations(session, live, stale)
        if not heartbeats.pool_alive(session, "gpu"):
            sweeping.note_no_gpu_worker(session, BATCH)
    if settings.result_ttl_days > 0:
        with session_scope() as session:
            folders = expire_results(session, settings.result_ttl_days, BATCH)
        for folder in folders:  # once the rows are gone: a failure here only leaves bytes
            remove_folder(folder)
        done["results_expired"] = len(folders)
        with session_scope() as session:
            uploads = expire_uploads(session, settings.result_ttl_days, BATCH)
        for uri in uploads:
            remove_object(uri)
        done["uploads_expired"] = len(uploads)
    sent = [(task, args, queue) for task, args, queue in sends if publish(task, args, queue)]
    kinds = {
        TASK_ASSEMBLE_JOB: "assembled",
        TASK_DELIVER_WEBHOOK: "deliveries",
        TASK_VALIDATE_MODEL: "validations",
    }
    for task, _, _ in sent:
        done[kinds.get(task, "republished")] += 1
    _mark_dispatched(sent)
    return done


def _deliveries(session: Any, live: set[TaskKey] | None, recent: float | None) -> list[Send]:
    resend = webhooks.take_back_expired(session, BATCH)
    sent = None if recent is None else timedelta(seconds=recent)
    for job_id, delivery_id in webhooks.due_undispatched(session, GRACE, BATCH, resend_after=sent):
        if live is None or (TASK_DELIVER_WEBHOOK, (job_id, delivery_id)) not in live:
            resend.append((job_id, delivery_id))
    return [(TASK_DELIVER_WEBHOOK, [job_id, d], WEBHOOK_QUEUE) for job_id, d in resend]


def _stuck_validations(session: Any, live: set[TaskKey] | None, visibility: float) -> list[Send]:
    """Versions validating with no attempt that will finish them: never published, message
    lost, or an attempt whose lease ran out. The next attempt counts itself (MAX_ATTEMPTS)."""
    now = sweeping.db_now(session)
    grace = now - GRACE
    stale = now - timedelta(seconds=visibility)
    sends: list[Send] = []
    for version_id, dispatched, lease in validation.validating(session, BATCH):
        key: TaskKey = (TASK_VALIDATE_MODEL, (version_id,))
        if live is not None and key in live:
            continue  # a message will still be delivered
        if lease is not None:
            lost = lease < now  # an attempt holds it until then
        elif dispatched is None:
            lost = True
        else:
            lost = dispatched < grace if live is not None else dispatched < stale
        if lost:
            sends.append((TASK_VALIDATE_MODEL, [version_id], VALIDATION_QUEUE))
    return sends


def _lost_messages(session: Any, live: set[TaskKey] | None, visibility: float) -> list[Send]:
    """Queued work whose message the broker no longer holds (ages by the database's clock,
    which wrote them)."""
    now = sweeping.db_now(session)
    grace = now - GRACE
    # Without a view into the broker, only work published `visibility` seconds ago is resent
    # (the visibility timeout on Redis, BROKER_REDELIVER_SECONDS on RabbitMQ).
    stale = now - timedelta(seconds=visibility)

    def lost(key: TaskKey, dispatched: Any) -> bool:
        if dispatched is None:
            return True
        if dispatched > grace:
            return False
        return key not in live if live is not None else dispatched < stale

    sends: list[Send] = []
    for job_id, queue, dispatched in sweeping.queued_jobs(session, grace, BATCH):
        if lost((TASK_PLAN_JOB, (job_id,)), dispatched):
            sends.append((TASK_PLAN_JOB, [job_id], queue))
    for job_id, index, queue, dispatched in sweeping.released_shards(session, BATCH):
        if lost((TASK_RUN_SHARD, (job_id, index)), dispatched):
            sends.append((TASK_RUN_SHARD, [job_id, index], queue))
    return sends


def _dead_planners(
    session: Any, max_attempts: int, live: set[TaskKey] | None, recent: float | None = None
) -> list[Send]:
    """Jobs whose planner's lease ran out before it recorded any shard, with no message."""
    sent_after = None if recent is None else sweeping.db_now(session) - timedelta(seconds=recent)
    return [
        (TASK_PLAN_JOB, [job_id], queue)
        for job_id, queue in sweeping.dead_planners(session, max_attempts, sent_after, BATCH)
        if live is None or (TASK_PLAN_JOB, (job_id,)) not in live
    ]


def _mark_dispatched(sends: list[Send]) -> None:
    with session_scope() as session:
        now = sweeping.db_now(session)
        for task, args, _ in sends:
            if task == TASK_PLAN_JOB:
                sweeping.mark_job_redispatched(session, args[0], now)
            elif task == TASK_DELIVER_WEBHOOK:
                webhooks.mark_dispatched(session, args[1])
            elif task == TASK_VALIDATE_MODEL:
                validation.mark_dispatched(session, args[0], now)
            elif task == TASK_RUN_SHARD:
                sweeping.mark_shard_dispatched(session, args[0], args[1], now)


def run_sweeper() -> None:
    """Sweep forever; only the holder of the advisory lock acts."""
    settings = get_settings()
    log.info(
        "sweeper started: every %.1fs, lease %.1fs",
        settings.sweep_interval_seconds,
        settings.lease_seconds,
    )
    lock_conn = None
    while True:
        try:
            if lock_conn is None:
                lock_conn = get_engine().connect().execution_options(isolation_level="AUTOCOMMIT")
            if sweeping.try_lock(lock_conn, SWEEPER_LOCK):
                done = sweep_once()
                if any(done.values()):
                    log.info("sweep: %s", done)
        except Exception:  # the database or the broker may be away; try again next time
            log.warning("sweep failed", exc_info=True)
            if lock_conn is not None:
                lock_conn.invalidate()
                lock_conn = None
        time.sleep(settings.sweep_interval_seconds)
