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
    assert first == [(a_urgent, 0), (b_job, 0), (a_urgent, 1)]
    assert scheduler.release(session, queue, window=3) == []  # the window is full
    assert scheduler.count_in_flight(session, queue) == 3

    _finish(session, b_job, 0)  # B has nothing in flight now: its next shard goes
    assert scheduler.release(session, queue, window=3) == [(b_job, 1)]
    _finish(session, a_urgent, 0)
    _finish(session, a_urgent, 1)  # the urgent job is done: A's older normal job follows
    assert scheduler.release(session, queue, window=3) == [(a_old, 0), (a_old, 1)]


def test_low_priority_waits_for_the_tenants_other_work(session: Session) -> None:
    from app.services import scheduler
    from app.services.tenants import get_or_create_tenant

    queue = f"q-{secrets.token_hex(4)}"
    a = get_or_create_tenant(session, f"a-{secrets.token_hex(4)}").id
    low = _job(session, a, queue, 1, age=0, priority="low")
    normal = _job(session, a, queue, 1, age=1)
    assert scheduler.release(session, queue, window=1) == [(normal, 0)]
    _finish(session, normal, 0)
    assert scheduler.release(session, queue, window=1) == [(low, 0)]
