"""The scheduler's choices, one release at a time, on rows of a pool no worker serves.

Real PostgreSQL, no workers: jobs and shards are written on a queue of the test's own, so the
farm's other work never enters the picture, and everything is rolled back at the end.
"""

from __future__ import annotations

import secrets
from datetime import timedelta

import pytest
from sqlalchemy import update
from sqlalchemy.orm import Session

pytestmark = pytest.mark.integration


def _job(session: Session, tenant_id: str, queue: str, shards: int, age: int, **fields: str) -> str:
    from app.db import utcnow
    from app.models import Job, JobShard

    job = Job(
        tenant_id=tenant_id,
        type="inference",
        status="running",
        model="minilm@1",
        device="cpu",
        queue=queue,
        params={},
        meta={},
        usage={},
        shards_total=shards,
        created_at=utcnow() - timedelta(seconds=100 - age),
        **fields,
    )
    session.add(job)
    session.flush()
    for i in range(shards):
        session.add(
            JobShard(
                job_id=job.id, index=i, start_item=i, end_item=i + 1, start_offset=0, start_line=1
            )
        )
    session.flush()
    return str(job.id)


def _finish(session: Session, job_id: str, index: int) -> None:
    from app.models import JobShard

    session.execute(
        update(JobShard)
        .where(JobShard.job_id == job_id, JobShard.index == index)
        .values(status="succeeded")
    )


def test_fair_share_then_priority_then_age_within_the_window(session: Session) -> None:
    from app.services import scheduler
    from app.services.tenants import get_or_create_tenant

    queue = f"q-{secrets.token_hex(4)}"
    a = get_or_create_tenant(session, f"a-{secrets.token_hex(4)}").id
    b = get_or_create_tenant(session, f"b-{secrets.token_hex(4)}").id
    a_old = _job(session, a, queue, 4, age=0)
    a_urgent = _job(session, a, queue, 2, age=1, priority="high")
    b_job = _job(session, b, queue, 2, age=2)

    # A first (its head, the urgent job, is older than B's), then B (fewer in flight), then A
    # again (equal counts: the tenant served longest ago).
    first = scheduler.release(session, queue, window=3)
    assert first == [(a_urgent, 0, "normal"), (b_job, 0, "normal"), (a_urgent, 1, "normal")]
    assert scheduler.release(session, queue, window=3) == []  # the window is full
    assert scheduler.count_in_flight(session, queue) == 3

    _finish(session, b_job, 0)  # B has nothing in flight now: its next shard goes
    assert scheduler.release(session, queue, window=3) == [(b_job, 1, "normal")]
    _finish(session, a_urgent, 0)
    _finish(session, a_urgent, 1)  # the urgent job is done: A's older normal job follows
    assert scheduler.release(session, queue, window=3) == [
        (a_old, 0, "normal"),
        (a_old, 1, "normal"),
    ]


def test_low_priority_waits_for_the_tenants_other_work(session: Session) -> None:
    from app.services import scheduler
    from app.services.tenants import get_or_create_tenant

    queue = f"q-{secrets.token_hex(4)}"
    a = get_or_create_tenant(session, f"a-{secrets.token_hex(4)}").id
    low = _job(session, a, queue, 1, age=0, priority="low")
    normal = _job(session, a, queue, 1, age=1)
    assert scheduler.release(session, queue, window=1) == [(normal, 0, "normal")]
    _finish(session, normal, 0)
    assert scheduler.release(session, queue, window=1) == [(low, 0, "normal")]


def _released_at(session: Session, job_id: str, index: int) -> object:
    from sqlalchemy import select

    from app.models import JobShard

    return session.scalar(
        select(JobShard.dispatched_at).where(JobShard.job_id == job_id, JobShard.index == index)
    )


def test_a_full_window_gives_a_tenants_unstarted_slot_to_its_better_work(
    session: Session,
) -> None:
    from sqlalchemy import select

    from app.db import utcnow
    from app.models import JobEvent
    from app.services import scheduler, sweeping
    from app.services import shards as shard_service
    from app.services.tenants import get_or_create_tenant

    queue = f"q-{secrets.token_hex(4)}"
    a = get_or_create_tenant(session, f"a-{secrets.token_hex(4)}").id
    b = get_or_create_tenant(session, f"b-{secrets.token_hex(4)}").id
    backlog = _job(session, a, queue, 4, age=0)
    other = _job(session, b, queue, 2, age=1)
    released = scheduler.release(session, queue, window=3)
    assert released == [(backlog, 0, "normal"), (other, 0, "normal"), (backlog, 1, "normal")]
    assert shard_service.claim_shard(session, backlog, 0, "worker-1", 60) is not None

    # A's urgent job arrives with the window full: A's released, unstarted shard 1 gives up
    # its slot; B's shard, unstarted too, keeps its own (priority never crosses tenants).
    urgent = _job(session, a, queue, 2, age=2, priority="high")
    assert scheduler.release(session, queue, window=3) == [(urgent, 0, "high")]
    assert scheduler.count_in_flight(session, queue) == 3
    assert _released_at(session, backlog, 1) is None
    assert _released_at(session, other, 0) is not None
    recalled = session.execute(
        select(JobEvent.data).where(JobEvent.job_id == backlog, JobEvent.type == "shard_recalled")
    ).scalar_one()
    assert recalled == {"shard": 1, "queue": queue, "for": {"job": urgent, "shard": 0}}
    # The sweeper, resending a message it had found lost, leaves a recalled shard recalled.
    sweeping.mark_shard_dispatched(session, backlog, 1, utcnow())
    assert _released_at(session, backlog, 1) is None
    # The recalled shard's message, when a worker takes it, claims nothing.
    assert shard_service.claim_shard(session, backlog, 1, "worker-2", 60) is None
    assert shard_service.claim_shard(session, urgent, 0, "worker-2", 60) is not None
    # Nothing of A's is left to give up (shard 0 runs): the urgent job's next shard waits.
    assert scheduler.release(session, queue, window=3) == []

    # B's own urgent job takes B's unstarted slot, never A's.
    b_urgent = _job(session, b, queue, 1, age=3, priority="high")
    assert scheduler.release(session, queue, window=3) == [(b_urgent, 0, "high")]
    assert _released_at(session, other, 0) is None
    assert _released_at(session, urgent, 0) is not None

    # When a slot frees, the tenant's urgent work still goes first; the recalled shard waits.
    _finish(session, backlog, 0)
    assert scheduler.release(session, queue, window=3) == [(urgent, 1, "normal")]


def test_a_high_jobs_messages_are_taken_before_normal_ones_already_waiting(
    services: dict[str, str],
) -> None:
    """On Redis, what a worker's BRPOP takes first: kombu's list for the lowest step."""
    import redis

    from app.broker.dispatch import TASK_ASSEMBLE_JOB, producer, publish, publish_job, publish_shard

    queue = f"q-{secrets.token_hex(4)}"
    assert publish_job("job-normal", queue, "normal")
    assert publish_job("job-low", queue, "low")  # a low job's plan is no later than normal's
    assert publish_shard("job-normal", 0, queue)
    assert publish_job("job-high", queue, "high")
    assert publish_shard("job-high", 0, queue, "high")  # released in a recalled one's slot
    assert publish(TASK_ASSEMBLE_JOB, ["job-done"], queue)  # no priority: with the high ones
    taken = []
    with producer().connection_for_read() as conn:
        waiting = conn.SimpleQueue(queue)
        try:
            for _ in range(6):
                message = waiting.get(timeout=5)
                taken.append((message.headers["task"], tuple(message.payload[0])))
                message.ack()
        finally:
            waiting.queue.delete()
            waiting.close()
    # The queue's declaration left binding keys: they go too.
    broker = redis.Redis.from_url(services["MODELFARM_REDIS_URL"])
    broker.delete(f"_kombu.binding.{queue}", f"_kombu.binding_permanent.{queue}")
    broker.close()
    assert taken == [
        ("modelfarm.plan_job", ("job-high",)),
        ("modelfarm.run_shard", ("job-high", 0)),
        (TASK_ASSEMBLE_JOB, ("job-done",)),
        ("modelfarm.plan_job", ("job-normal",)),
        ("modelfarm.plan_job", ("job-low",)),
        ("modelfarm.run_shard", ("job-normal", 0)),
    ]


def test_a_tenants_high_backlog_still_shares_the_pool_with_a_normal_one(
    session: Session,
) -> None:
    """Fair share's releases reach the worker in the order the broker gives them: the
    messages' priority steps (app/broker/dispatch.py), first in first out within a step. One
    worker, a window of 2: A's high shards and B's normal ones take turns."""
    from app.broker.dispatch import REDIS_PRIORITY
    from app.services import scheduler
    from app.services import shards as shard_service
    from app.services.tenants import get_or_create_tenant

    queue = f"q-{secrets.token_hex(4)}"
    a = get_or_create_tenant(session, f"a-{secrets.token_hex(4)}").id
    b = get_or_create_tenant(session, f"b-{secrets.token_hex(4)}").id
    jobs = {_job(session, a, queue, 6, age=0, priority="high"): "A"}
    jobs[_job(session, b, queue, 6, age=1)] = "B"
    broker: list[tuple[int, int, str, int]] = []  # (step, order sent, job, index)
    sent = 0
    ran = ""
    for _ in range(10):
        for job_id, index, priority in scheduler.release(session, queue, window=2):
            broker.append((REDIS_PRIORITY[priority], sent, job_id, index))
            sent += 1
        broker.sort()
        _, _, job_id, index = broker.pop(0)  # what the worker's BRPOP takes
        assert shard_service.claim_shard(session, job_id, index, "worker", 60) is not None
        _finish(session, job_id, index)
        ran += jobs[job_id]
    assert ran == "ABABABABAB", ran


def test_a_newcomer_takes_the_unstarted_slot_of_a_tenant_ahead_of_its_share(
    session: Session,
) -> None:
    """Issue 25, part 4: with the window full of A's shards (one running, one waiting in the
    broker), B's first shard takes the waiting one's slot, its message going first, so B runs
    after the shard running now, not after A's queued one too. Never back and forth."""
    from app.services import scheduler
    from app.services import shards as shard_service
    from app.services.tenants import get_or_create_tenant

    queue = f"q-{secrets.token_hex(4)}"
    a = get_or_create_tenant(session, f"a-{secrets.token_hex(4)}").id
    b = get_or_create_tenant(session, f"b-{secrets.token_hex(4)}").id
    c = get_or_create_tenant(session, f"c-{secrets.token_hex(4)}").id
    flood = [_job(session, a, queue, 1, age=i) for i in range(4)]
    assert scheduler.release(session, queue, window=2) == [
        (flood[0], 0, "normal"),
        (flood[1], 0, "normal"),
    ]
    assert shard_service.claim_shard(session, flood[0], 0, "worker-1", 60) is not None

    small = _job(session, b, queue, 1, age=10)
    assert scheduler.release(session, queue, window=2) == [(small, 0, "high")]
    assert _released_at(session, flood[1], 0) is None  # A's unstarted one waits again
    assert scheduler.count_in_flight(session, queue) == 2
    # One each now: C, arriving with nothing in flight, waits for the next free slot (a
    # difference of one is fair share's ordinary order), and nobody's slot swaps back.
    other = _job(session, c, queue, 1, age=11)
    assert scheduler.release(session, queue, window=2) == []
    assert shard_service.claim_shard(session, small, 0, "worker-2", 60) is not None
    assert shard_service.claim_shard(session, flood[1], 0, "worker-2", 60) is None  # recalled
    assert scheduler.release(session, queue, window=2) == []
    assert _released_at(session, other, 0) is None
