"""A release's cost does not grow with the backlog (issue 24, part 5's last sentence).

Every shard finish runs a release under its pool's lock. It used to read every waiting shard of
the pool to find each tenant's head; now it probes indexes (migration 0018). The bound here is
on the work PostgreSQL does (buffers an EXPLAIN ANALYZE reports), with thousands of shards
waiting against a hundred, and one loose bound on time; neither is a timing of speed.
"""

from __future__ import annotations

import json
import secrets
import threading
import time
from typing import Any

import pytest
from sqlalchemy import func, select, text, update
from sqlalchemy.orm import Session

from tests.integration.test_scheduler_order import _job

pytestmark = pytest.mark.integration


def _backlog(session: Session, queue: str, tenant_id: str, jobs: int, shards: int) -> list[str]:
    """`jobs` running jobs of the tenant in the pool with `shards` waiting shards each."""
    made = []
    for age in range(jobs):
        job_id = _job(session, tenant_id, queue, 0, age=age % 100)
        session.execute(
            text(
                "INSERT INTO job_shards (job_id, index, start_item, end_item, start_offset,"
                " start_line, status, attempts, succeeded, failed)"
                " SELECT :job, i, i, i + 1, 0, 1, 'queued', 0, 0, 0"
                " FROM generate_series(0, :n - 1) AS i"
            ),
            {"job": job_id, "n": shards},
        )
        made.append(job_id)
    return made


def _buffers(session: Session, statement: Any) -> int:
    """Shared buffers (hit or read) PostgreSQL touched to run `statement`."""
    compiled = statement.compile(session.get_bind(), compile_kwargs={"literal_binds": True})
    plan = session.execute(text(f"EXPLAIN (ANALYZE, BUFFERS, FORMAT JSON) {compiled}")).scalar()
    top = (json.loads(plan) if isinstance(plan, str) else plan)[0]["Plan"]
    return int(top["Shared Hit Blocks"]) + int(top["Shared Read Blocks"])


def _pool(session: Session, waiting_per_tenant: int) -> str:
    from app.services.tenants import get_or_create_tenant

    queue = f"scale-{secrets.token_hex(4)}"
    for name in ("a", "b"):
        tenant = get_or_create_tenant(session, f"{name}-{secrets.token_hex(4)}").id
        # one big job, and many small ones: both kinds of backlog
        _backlog(session, queue, tenant, 1, waiting_per_tenant // 2)
        _backlog(session, queue, tenant, waiting_per_tenant // 20, 10)
    return queue


def test_one_release_reads_as_much_with_thousands_waiting_as_with_a_hundred(
    session: Session,
) -> None:
    from app.services import scheduler

    small, large = _pool(session, 100), _pool(session, 4_000)
    session.execute(text("ANALYZE jobs"))
    session.execute(text("ANALYZE job_shards"))
    costs = {}
    for queue in (small, large):
        pick = select(scheduler.heads(queue))
        in_flight = select(func.count()).select_from(scheduler.JobShard)
        in_flight = in_flight.join(scheduler.Job, scheduler.Job.id == scheduler.JobShard.job_id)
        costs[queue] = (
            _buffers(session, pick),
            _buffers(session, in_flight.where(*scheduler.in_flight(queue))),
        )
    waiting = session.scalar(
        select(func.count())
        .select_from(scheduler.JobShard)
        .join(scheduler.Job, scheduler.Job.id == scheduler.JobShard.job_id)
        .where(*scheduler.waiting(large))
    )
    assert waiting == 8_000
    (small_pick, small_count), (large_pick, large_count) = costs[small], costs[large]
    # The same probes, a few more index pages deep: never the thousands of pages the shards fill.
    assert large_pick <= 2 * small_pick + 20, costs
    assert large_count <= 2 * small_count + 20, costs

    started = time.monotonic()
    released = scheduler.release(session, large, window=8)
    assert time.monotonic() - started < 5.0  # a bound on a loaded machine, not a timing
    tenants = {
        session.scalar(select(scheduler.Job.tenant_id).where(scheduler.Job.id == job))
        for job, _, _ in released
    }
    assert len(released) == 8 and len(tenants) == 2  # fair share across both tenants
    assert scheduler.count_in_flight(session, large) == 8


def test_concurrent_finishes_each_fill_their_slot_once(services: dict[str, str]) -> None:
    """Eight shards finish at once in a pool with thousands waiting; each finisher's release
    runs in its own transaction, at once. The window ends full, never over-full, and no
    finisher waited behind a scan of the backlog."""
    from app.models import JobShard
    from app.services import scheduler
    from app.unit_of_work import session_scope

    with session_scope() as session:
        queue = _pool(session, 2_000)
    with session_scope() as session:
        session.execute(text("ANALYZE jobs"))
        session.execute(text("ANALYZE job_shards"))
        first = scheduler.release(session, queue, window=8)
        session.info.clear()  # no messages: nothing consumes this pool
    assert len(first) == 8
    with session_scope() as session:  # all eight finish
        for job_id, index, _ in first:
            session.execute(
                update(JobShard)
                .where(JobShard.job_id == job_id, JobShard.index == index)
                .values(status="succeeded")
            )
    waits: list[float] = []
    errors: list[BaseException] = []
    gate = threading.Barrier(8)

    def finish() -> None:
        try:
            gate.wait()
            started = time.monotonic()
            with session_scope() as session:
                scheduler.release(session, queue, window=8)
                session.info.clear()
            waits.append(time.monotonic() - started)
        except BaseException as exc:  # noqa: BLE001 - reported below
            errors.append(exc)

    threads = [threading.Thread(target=finish) for _ in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(60)
    assert not errors, errors
    with session_scope() as session:
        assert scheduler.count_in_flight(session, queue) == 8
        released = session.scalar(
            select(func.count()).where(
                JobShard.dispatched_at.is_not(None),
                JobShard.job_id.in_(select(scheduler.Job.id).where(scheduler.Job.queue == queue)),
            )
        )
    assert released == 16  # the first eight (finished) and eight more: no slot filled twice
    assert max(waits) < 10.0, waits  # a bound on queueing behind seven short releases
