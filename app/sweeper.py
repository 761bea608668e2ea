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
"""

from __future__ import annotations

import logging
import time
from datetime import timedelta
from typing import Any

from sqlalchemy import select, text, update

from app.broker_scan import TaskKey
from app.config import get_settings
from app.db import get_engine, session_scope, utcnow
from app.dispatch import (
    TASK_ASSEMBLE_JOB,
    TASK_DELIVER_WEBHOOK,
    TASK_PLAN_JOB,
    TASK_RUN_SHARD,
    TASK_VALIDATE_MODEL,
    VALIDATION_QUEUE,
    WEBHOOK_QUEUE,
    broker_inspectable,
    live_task_keys,
    publish,
    stale_after_seconds,
)
from app.models import Job, JobShard, JobStatus, JobType, ShardStatus
from app.services import admission, control, scheduler, validation, webhooks, workers
from app.services.files import expire_uploads, remove_folder, remove_object
from app.services.jobs import NO_GPU_WORKER, add_event, expire_results, transition
from app.services.shards import (
    active_shards,
    cancel_queued_shards,
    fail_job,
    give_up_shard,
    lock_job,
)

log = logging.getLogger(__name__)

SHARD_QUEUES = ("cpu", "gpu")  # the pools whose shards the scheduler releases
SWEEPER_LOCK = 0x6D66_7377  # "mfsw": the advisory lock only one sweeper holds
BATCH = 500  # rows looked at per step and sweep


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
    sends: list[tuple[str, list[Any], str]] = []
    with session_scope() as session:
        for job in control.jobs_past_deadline(session, BATCH):
            done["deadlines"] += 1
            if control.expire_deadline(session, job):
                sends.append((TASK_ASSEMBLE_JOB, [job.id], job.queue))
    with session_scope() as session:
        _expire_leases(session, settings.max_attempts, done, sends)
    live = live_task_keys(settings)
    stale = stale_after_seconds(settings)  # without a view into the broker (RabbitMQ)
    # On a broker that cannot be looked into, a message sent less than `stale` ago counts as
    # still on its way, so waiting work is not published again at every sweep.
    recent = None if broker_inspectable(settings) else stale
    with session_scope() as session:
        sends += _lost_messages(session, live, stale)
        sends += _dead_planners(session, settings.max_attempts, live, recent)
        sends += _unassembled(session)
    with session_scope() as session:  # held jobs that may start: a releaser died, or was late
        holding = admission.holding_tenants(session, BATCH)
    done["republished"] += admission.release_and_publish(holding)
    for queue in SHARD_QUEUES:  # the safety net: a window left unfilled is filled here
        with session_scope() as session:
            window = scheduler.window_size(
                session, queue, settings.scheduler_window, settings.processes_per_worker(queue)
            )
            released = scheduler.release(session, queue, window)
        # Sent at once, marked released already: a failed publish is found by the next scan.
        done["released"] += sum(publish(TASK_RUN_SHARD, [j, i], queue) for j, i in released)
    with session_scope() as session:
        sends += _deliveries(session, live, recent)
        sends += _stuck_validations(session, live, stale)
        _gpu_notices(session)
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


def _gpu_notices(session: Any) -> None:
    """A queued GPU job says so when no GPU worker is running (one may have gone away)."""
    if workers.pool_alive(session, "gpu"):
        return
    waiting = session.scalars(
        select(Job.id)
        .where(Job.status == JobStatus.QUEUED, Job.queue == "gpu", Job.notice.is_(None))
        .limit(BATCH)
    ).all()
    for job_id in waiting:
        session.execute(update(Job).where(Job.id == job_id).values(notice=NO_GPU_WORKER))
        add_event(session, job_id, "waiting_for_gpu_worker", {"notice": NO_GPU_WORKER})


def _deliveries(
    session: Any, live: set[TaskKey] | None, recent: float | None
) -> list[tuple[str, list[Any], str]]:
    resend = webhooks.take_back_expired(session, BATCH)
    sent = None if recent is None else timedelta(seconds=recent)
    for job_id, delivery_id in webhooks.due_undispatched(
        session, timedelta(seconds=2), BATCH, resend_after=sent
    ):
        if live is None or (TASK_DELIVER_WEBHOOK, (job_id, delivery_id)) not in live:
            resend.append((job_id, delivery_id))
    return [(TASK_DELIVER_WEBHOOK, [job_id, d], WEBHOOK_QUEUE) for job_id, d in resend]


def _stuck_validations(
    session: Any, live: set[TaskKey] | None, visibility: float
) -> list[tuple[str, list[Any], str]]:
    """Versions validating with no attempt that will finish them: never published, message
    lost, or an attempt whose lease ran out. The next attempt counts itself (MAX_ATTEMPTS)."""
    now = utcnow()
    grace = now - timedelta(seconds=2)
    stale = now - timedelta(seconds=visibility)
    sends: list[tuple[str, list[Any], str]] = []
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


def _expire_leases(
    session: Any, max_attempts: int, done: dict[str, int], sends: list[tuple[str, list[Any], str]]
) -> None:
    # Job rows first, then their shards (the lock order of app/services/shards.py); a job whose
    # row another transaction holds is left for the next sweep.
    # A stopping job runs nothing more: its waiting shards close, so it can be assembled.
    stopping = session.scalars(
        select(Job.id)
        .where(
            Job.status == JobStatus.CANCELLING,
            Job.id.in_(select(JobShard.job_id).where(JobShard.status == ShardStatus.QUEUED)),
        )
        .limit(BATCH)
    ).all()
    for job_id in stopping:
        if lock_job(session, job_id, skip_locked=True):
            cancel_queued_shards(session, job_id)
    candidates = session.execute(
        select(JobShard.id, JobShard.job_id)
        .join(Job, Job.id == JobShard.job_id)
        .where(
            JobShard.status == ShardStatus.RUNNING,
            JobShard.lease_expires_at < utcnow(),
            Job.status.in_([JobStatus.RUNNING, JobStatus.CANCELLING]),
        )
        .limit(BATCH)
    ).all()
    expired = []
    for shard_id, job_id in candidates:
        if not lock_job(session, job_id, skip_locked=True):
            continue
        row = session.execute(
            select(JobShard, Job.queue, Job.status)
            .join(Job, Job.id == JobShard.job_id)
            .where(
                JobShard.id == shard_id,
                JobShard.status == ShardStatus.RUNNING,
                JobShard.lease_expires_at < utcnow(),
                Job.status.in_([JobStatus.RUNNING, JobStatus.CANCELLING]),
            )
            .with_for_update(of=JobShard, skip_locked=True)
        ).first()
        if row is not None:
            expired.append(row)
    for shard, queue, job_status in expired:
        info = {"shard": shard.index, "attempt": shard.attempts, "owner": shard.lease_owner}
        add_event(session, shard.job_id, "lease_expired", info)
        if job_status == JobStatus.CANCELLING:
            # The dead attempt's part files may end mid-line: they are left out.
            shard.status, shard.finished_at = ShardStatus.CANCELLED, utcnow()
            shard.succeeded = shard.failed = 0  # its items are in neither result file
            shard.lease_owner = shard.lease_expires_at = None
            continue
        if shard.attempts >= max_attempts:
            give_up_shard(session, shard)
            done["failed"] += 1
            continue
        shard.status, shard.lease_owner, shard.lease_expires_at = ShardStatus.QUEUED, None, None
        # Sent again at once, inside the window it already held (a fast-path shard, which had
        # no message, joins it): marked released here, so no releaser sends it a second time.
        shard.last_error, shard.dispatched_at = "lease expired", utcnow()
        sends.append((TASK_RUN_SHARD, [shard.job_id, shard.index], queue))
        done["expired"] += 1


def _lost_messages(
    session: Any, live: set[TaskKey] | None, visibility: float
) -> list[tuple[str, list[Any], str]]:
    """Queued work whose message the broker no longer holds."""
    now = utcnow()
    grace = now - timedelta(seconds=2)  # the API publishes just after it commits
    # Without a view into the broker, only work published `visibility` seconds ago is resent
    # (the visibility timeout on Redis, BROKER_REDELIVER_SECONDS on RabbitMQ).
    stale = now - timedelta(seconds=visibility)

    def lost(key: TaskKey, dispatched: Any) -> bool:
        if dispatched is None:
            return True
        if dispatched > grace:
            return False
        return key not in live if live is not None else dispatched < stale

    sends: list[tuple[str, list[Any], str]] = []
    jobs = session.execute(
        select(Job.id, Job.queue, Job.dispatched_at)
        # A held job has no message on purpose: `admission.release` sends it (step 3).
        .where(Job.status == JobStatus.QUEUED, Job.created_at < grace, Job.held_at.is_(None))
        .limit(BATCH)
    ).all()
    for job_id, queue, dispatched in jobs:
        if lost((TASK_PLAN_JOB, (job_id,)), dispatched):
            sends.append((TASK_PLAN_JOB, [job_id], queue))
    shards = session.execute(
        select(JobShard.job_id, JobShard.index, Job.queue, JobShard.dispatched_at)
        .join(Job, Job.id == JobShard.job_id)
        .where(
            JobShard.status == ShardStatus.QUEUED,
            # Never released: it waits for the scheduler's window, with no message to lose.
            JobShard.dispatched_at.is_not(None),
            Job.status == JobStatus.RUNNING,
        )
        .limit(BATCH)
    ).all()
    for job_id, index, queue, dispatched in shards:
        if lost((TASK_RUN_SHARD, (job_id, index)), dispatched):
            sends.append((TASK_RUN_SHARD, [job_id, index], queue))
    return sends


def _dead_planners(
    session: Any, max_attempts: int, live: set[TaskKey] | None, recent: float | None = None
) -> list[tuple[str, list[Any], str]]:
    """Jobs whose planner's lease ran out before it recorded any shard."""
    sends: list[tuple[str, list[Any], str]] = []
    sent_after = None if recent is None else utcnow() - timedelta(seconds=recent)
    jobs = session.scalars(
        select(Job)
        .where(
            Job.status.in_([JobStatus.RUNNING, JobStatus.CANCELLING]),
            Job.shards_total.is_(None),
            Job.lease_expires_at < utcnow(),
        )
        .limit(BATCH)
    ).all()
    for job in jobs:
        if job.status == JobStatus.CANCELLING:  # stopped before anything ran
            transition(
                session,
                job.id,
                [JobStatus.CANCELLING],
                JobStatus.CANCELLED,
                lease_owner=None,
                lease_expires_at=None,
            )
        elif job.attempts >= max_attempts:
            if job.type == JobType.TRAINING:
                code = "worker_lost"
                message = f"training lost its worker {job.attempts} times (killed or hung)"
            else:
                code = "planning_failed"
                message = f"the input could not be split into shards in {job.attempts} attempts"
            fail_job(session, job.id, code, message)
        elif sent_after is not None and job.dispatched_at and job.dispatched_at > sent_after:
            continue  # sent again lately; its message may still be waiting
        elif live is None or (TASK_PLAN_JOB, (job.id,)) not in live:
            sends.append((TASK_PLAN_JOB, [job.id], job.queue))
    return sends


def _unassembled(session: Any) -> list[tuple[str, list[Any], str]]:
    now = utcnow()
    rows = session.execute(
        select(Job.id, Job.queue)
        .where(
            Job.status.in_([JobStatus.RUNNING, JobStatus.CANCELLING]),
            Job.shards_total.is_not(None),
            (Job.lease_owner.is_(None)) | (Job.lease_expires_at < now),
        )
        .limit(BATCH)
    ).all()
    return [
        (TASK_ASSEMBLE_JOB, [job_id], queue)
        for job_id, queue in rows
        if active_shards(session, job_id) == 0
    ]


def _mark_dispatched(sends: list[tuple[str, list[Any], str]]) -> None:
    now = utcnow()
    with session_scope() as session:
        for task, args, _ in sends:
            if task == TASK_PLAN_JOB:
                session.execute(update(Job).where(Job.id == args[0]).values(dispatched_at=now))
                add_event(session, args[0], "redispatched", {"by": "sweeper"})
            elif task == TASK_DELIVER_WEBHOOK:
                webhooks.mark_dispatched(session, args[1])
            elif task == TASK_VALIDATE_MODEL:
                validation.mark_dispatched(session, args[0], now)
            elif task == TASK_RUN_SHARD:
                session.execute(
                    update(JobShard)
                    .where(JobShard.job_id == args[0], JobShard.index == args[1])
                    .values(dispatched_at=now)
                )


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
                lock_conn = get_engine().connect()
            held = lock_conn.execute(
                text("SELECT pg_try_advisory_lock(:k)"), {"k": SWEEPER_LOCK}
            ).scalar()
            lock_conn.commit()
            if held:
                done = sweep_once()
                if any(done.values()):
                    log.info("sweep: %s", done)
        except Exception:  # the database or the broker may be away; try again next time
            log.warning("sweep failed", exc_info=True)
            if lock_conn is not None:
                lock_conn.invalidate()
                lock_conn = None
        time.sleep(settings.sweep_interval_seconds)
