"""One owner per transaction (docs/decisions/0018): the unit of work commits, then sends what its
transaction queued; a group commit counts its own submissions against the quota and lists them
newest first as they were made; every lease, due time and dispatch time is PostgreSQL's, whatever
this process's clock says.
"""

from __future__ import annotations

import secrets
import threading
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
import redis
from sqlalchemy import func, select, text

pytestmark = pytest.mark.integration


@pytest.fixture
def tenant(services: dict[str, str]) -> Any:
    from app.services.tenants import create_tenant
    from app.unit_of_work import session_scope

    with session_scope() as session:
        return create_tenant(session, f"uow-{secrets.token_hex(5)}", {"max_queued_jobs": 3})


def _limits(tenant: Any, **limits: Any) -> Any:
    """The tenant with `limits` set (committed), as a detached object the next prepare reads."""
    from app.services.tenants import set_limits
    from app.unit_of_work import session_scope

    with session_scope() as session:
        tenant = session.merge(tenant)
        set_limits(session, tenant, limits)
    return tenant


def _body(text_: str, **more: Any) -> Any:
    from app.schemas.jobs import JobCreate

    return JobCreate.model_validate(
        {"model": "minilm", "device": "cpu", "input": {"items": [{"input": text_}]}, **more}
    )


def _batch(tenant: Any, count: int) -> list[Any]:
    from app.api.submissions import Waiting
    from app.services.jobs import prepare_submission

    return [
        Waiting(
            None,
            lambda session, i=i: prepare_submission(session, tenant, _body(f"item {i}")),
            done=threading.Event(),
        )
        for i in range(count)
    ]


def test_a_group_commit_counts_its_own_submissions_against_the_quota(tenant: Any) -> None:
    """Six submissions of a tenant allowed three unfinished jobs, in one batch: three are
    written, three refused with the quota's error (before: all six passed, each counting only
    the jobs already committed)."""
    from app.api.submissions import commit_batch
    from app.models import Job
    from app.services.errors import QuotaExceeded
    from app.unit_of_work import session_scope

    batch = _batch(tenant, 6)
    commit_batch(batch)
    refused = [w.error for w in batch if w.error is not None]
    assert len(refused) == 3 and all(isinstance(e, QuotaExceeded) for e in refused), refused
    assert [w.error is None for w in batch] == [True] * 3 + [False] * 3
    with session_scope() as session:
        count = session.scalar(select(func.count()).where(Job.tenant_id == tenant.id))
    assert count == 3


def test_newest_first_holds_inside_a_group_commit(tenant: Any) -> None:
    """Jobs written by one commit, in one millisecond or not, list newest first in the order
    they were submitted (ids are monotonic within a process)."""
    from app.api.submissions import commit_batch
    from app.services import jobs as job_service
    from app.unit_of_work import session_scope

    tenant = _limits(tenant, max_queued_jobs=None)
    batch = _batch(tenant, 40)
    commit_batch(batch)
    assert all(w.error is None for w in batch)
    made = [w.submission.job.id for w in batch]
    with session_scope() as session:
        listed, _ = job_service.list_jobs(session, session.merge(tenant), limit=100)
    assert [job.id for job in listed] == made[::-1]


@pytest.fixture
def broker(services: dict[str, str]) -> Iterator[redis.Redis]:
    client = redis.Redis.from_url(services["MODELFARM_REDIS_URL"])
    yield client
    client.close()


def test_messages_go_after_the_commit_and_never_after_a_rollback(broker: redis.Redis) -> None:
    from app.unit_of_work import Message, queued_messages, send_after_commit, session_scope

    queue = f"uow-{secrets.token_hex(4)}"
    seen: list[int] = []

    def counted() -> None:  # runs after the commit: the row is visible by then
        with session_scope() as other:
            seen.append(other.scalar(text("SELECT count(*) FROM pg_class WHERE false")) or 0)

    with session_scope() as session:
        send_after_commit(session, Message("modelfarm.test", ["a"], queue, committed=counted))
        assert len(queued_messages(session)) == 1
        assert broker.llen(queue) == 0  # nothing sent before the commit
    assert broker.llen(queue) == 1 and seen == [0]

    with pytest.raises(RuntimeError), session_scope() as session:
        send_after_commit(session, Message("modelfarm.test", ["b"], queue))
        raise RuntimeError("the work failed")
    assert broker.llen(queue) == 1  # the rolled-back transaction sent nothing
    broker.delete(queue)


def test_an_ending_job_releases_its_tenants_held_jobs_after_its_commit(tenant: Any) -> None:
    """The capped tenant's release is a follow-up of the ending job's unit of work, run once
    it commits, with no global commit hook."""
    from app.api.submissions import commit_batch
    from app.models import Job, JobStatus
    from app.services import admission
    from app.services.jobs import transition
    from app.unit_of_work import FOLLOW_UPS, session_scope

    tenant = _limits(tenant, max_queued_jobs=None)
    batch = _batch(tenant, 2)
    commit_batch(batch)
    first, second = (w.submission.job.id for w in batch)
    tenant = _limits(tenant, max_running_jobs=1)
    with session_scope() as session:
        session.execute(
            Job.__table__.update()
            .where(Job.id == first)
            .values(status=JobStatus.RUNNING, started_at=func.now())
        )
        session.execute(
            Job.__table__.update()
            .where(Job.id == second)
            .values(held_at=func.now(), dispatched_at=None)
        )
    with session_scope() as session:
        assert admission.release(session, tenant.id) == []  # the first one runs
    with session_scope() as session:
        transition(session, first, [JobStatus.RUNNING], JobStatus.FAILED)
        assert ("release", tenant.id) in session.info[FOLLOW_UPS]
        # not before the commit: the held job is still held inside the transaction
        assert session.scalar(select(Job.held_at).where(Job.id == second)) is not None
    with session_scope() as session:
        held_at, dispatched_at = session.execute(
            select(Job.held_at, Job.dispatched_at).where(Job.id == second)
        ).one()
    assert held_at is None and dispatched_at is not None


class _Skewed(datetime):
    """This process's wall clock, ten minutes fast."""

    @classmethod
    def now(cls, tz: Any = None) -> Any:
        return datetime.now(tz) + timedelta(minutes=10)


def test_leases_due_times_and_dispatch_times_are_the_databases(
    tenant: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    """With this process's clock ten minutes fast, what it writes or compares as a lease, a
    due time, a deadline or a dispatch time is within seconds of PostgreSQL's clock."""
    from app import db
    from app.models import Delivery
    from app.services import jobs as job_service
    from app.services import webhooks
    from app.unit_of_work import MESSAGES, session_scope

    monkeypatch.setattr(db, "datetime", _Skewed)
    monkeypatch.setattr(db, "_db_clock", None)
    assert db.utcnow() - datetime.now(UTC) > timedelta(minutes=9)  # the skew is in place

    def near(when: datetime | None, now: datetime, offset: float = 0.0) -> bool:
        assert when is not None
        return abs((when - now).total_seconds() - offset) < 5

    webhook = {"url": "http://127.0.0.1:9/hook", "events": ["job.succeeded"]}
    body = _body("clock", deadline_seconds=600, webhook=webhook)
    with session_scope() as session:
        now = session.scalar(select(func.statement_timestamp()))
        job = job_service.submit_job(session, session.merge(tenant), body)
        assert near(job.dispatched_at, now) and near(job.created_at, now)
        assert near(job.deadline_at, now, 600)
        session.flush()  # the job's row before its delivery's
        delivery = webhooks.enqueue(session, job, "job.succeeded", {})
        assert near(delivery.next_attempt_at, now) and near(delivery.dispatched_at, now)
        delivery_id = delivery.id
        # Kept from the broker: the session's workers must not plan the job or take the
        # delivery before this test claims it.
        session.info.pop(MESSAGES, None)
    with session_scope() as session:
        now = session.scalar(select(func.statement_timestamp()))
        claimed = webhooks.claim(session, delivery_id, "owner-1", 60)
        assert claimed is not None  # due by the database's clock, not ten minutes late
        lease = session.scalar(select(Delivery.lease_expires_at).where(Delivery.id == delivery_id))
        assert near(lease, now, 60)
        # a live lease is not taken back, though this clock says it ran out minutes ago
        assert delivery_id not in {d for _, d in webhooks.take_back_expired(session, 100)}
    assert near(db.database_clock(), now)
