"""A tenant's running-jobs cap, decided where a job starts: on rows of a pool no worker serves.

Real PostgreSQL, no workers: the jobs are written on a queue of the test's own and the
transaction is rolled back at the end, so the farm's other work never enters the picture.
"""

from __future__ import annotations

import secrets
from datetime import timedelta

import pytest
from sqlalchemy import select, update
from sqlalchemy.orm import Session

pytestmark = pytest.mark.integration


def _tenant(session: Session, cap: int | None) -> str:
    from app.services.tenants import get_or_create_tenant

    tenant = get_or_create_tenant(session, f"cap-{secrets.token_hex(4)}")
    tenant.max_running_jobs = cap
    session.flush()
    return str(tenant.id)


def _job(session: Session, tenant_id: str, queue: str, age: int, **fields: str) -> str:
    from app.db import utcnow
    from app.models import Job

    job = Job(
        tenant_id=tenant_id,
        type="inference",
        status=fields.pop("status", "queued"),
        model="minilm@1",
        device="cpu",
        queue=queue,
        params={},
        meta={},
        usage={},
        created_at=utcnow() - timedelta(seconds=100 - age),
        **fields,
    )
    session.add(job)
    session.flush()
    return str(job.id)


def _set(session: Session, job_id: str, status: str) -> None:
    from app.models import Job

    session.execute(update(Job).where(Job.id == job_id).values(status=status))


def _events(session: Session, job_id: str) -> list[tuple[str, dict[str, object]]]:
    from app.models import JobEvent

    rows = session.execute(
        select(JobEvent.type, JobEvent.data).where(JobEvent.job_id == job_id).order_by(JobEvent.id)
    )
    return [(t, d) for t, d in rows]


def test_over_the_cap_a_job_is_held_and_the_next_goes_by_priority(session: Session) -> None:
    from app.models import Job
    from app.services import admission

    queue = f"q-{secrets.token_hex(4)}"
    capped = _tenant(session, 1)
    first = _job(session, capped, queue, age=0)
    second = _job(session, capped, queue, age=1)
    assert admission.admit(session, second) == "held"  # the older first job goes before it
    assert admission.admit(session, first) == "start"
    _set(session, first, "running")
    urgent = _job(session, capped, queue, age=2, priority="high")
    assert admission.admit(session, urgent) == "held"  # one running: the cap is reached
    held = session.get_one(Job, urgent, populate_existing=True)
    assert held.status == "queued" and held.held_at is not None
    assert held.notice is not None and "max_running_jobs" in held.notice
    assert _events(session, urgent)[-1] == (
        "held",
        {"reason": "max_running_jobs", "limit": 1, "running": 1, "ahead": 0},
    )
    assert admission.release(session, capped) == []  # nothing may start while first runs

    _set(session, first, "succeeded")
    # The high-priority job goes before the older normal one; one slot, one job.
    assert admission.release(session, capped) == [(urgent, queue, "high")]
    assert admission.release(session, capped) == []  # it is on its way: not sent twice
    released = session.get_one(Job, urgent, populate_existing=True)
    assert released.held_at is None and released.dispatched_at is not None
    assert _events(session, urgent)[-1] == ("dispatched", {"queue": queue, "after": "held"})
    assert admission.admit(session, second) == "held"  # still behind the urgent job
    assert admission.admit(session, urgent) == "start"


def test_a_tenant_without_a_cap_is_never_held(session: Session) -> None:
    from app.services import admission

    queue = f"q-{secrets.token_hex(4)}"
    free = _tenant(session, None)
    for age in range(3):
        _job(session, free, queue, age=age, status="running")
    queued = _job(session, free, queue, age=5)
    assert admission.admit(session, queued) is None  # the plain claim takes it
    assert admission.holding_tenants(session, 1000).count(free) == 0


def test_a_higher_cap_or_none_lets_held_jobs_go(session: Session) -> None:
    from app.models import Tenant
    from app.services import admission

    queue = f"q-{secrets.token_hex(4)}"
    capped = _tenant(session, 1)
    _job(session, capped, queue, age=0, status="running")
    waiting = [_job(session, capped, queue, age=1 + i) for i in range(3)]
    assert [admission.admit(session, j) for j in waiting] == ["held"] * 3
    assert capped in admission.holding_tenants(session, 1000)
    session.get_one(Tenant, capped).max_running_jobs = 2
    session.flush()
    assert admission.release(session, capped) == [(waiting[0], queue, "normal")]
    session.get_one(Tenant, capped).max_running_jobs = None
    session.flush()
    assert sorted(admission.release(session, capped)) == sorted(
        (j, queue, "normal") for j in waiting[1:]
    )


def test_each_pool_keeps_its_own_order(session: Session) -> None:
    """A job waiting in another pool (no GPU worker, say) does not hold this pool's jobs."""
    from app.services import admission

    cpu, gpu = f"c-{secrets.token_hex(4)}", f"g-{secrets.token_hex(4)}"
    capped = _tenant(session, 1)
    stuck = _job(session, capped, gpu, age=0)  # older, in a pool nobody serves
    started = _job(session, capped, cpu, age=1)
    assert admission.admit(session, started) == "start"
    _set(session, started, "running")
    assert admission.admit(session, stuck) == "held"  # the cap itself counts every pool
