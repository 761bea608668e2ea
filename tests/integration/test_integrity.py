"""Integrity under scale (docs/decisions/0014-integrity.md): a job never ends with a line
missing, only the lease holder acts, leases are judged by the database's clock, retried writes
never count twice, and the sweeper finds stuck work however large the backlog.

Jobs made by hand sit on a queue no pool serves (as in test_concurrency.py), so the session's
worker and sweeper never run them; the code under test is the workers' and services' own."""

from __future__ import annotations

import secrets
import sys
import time
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path
from typing import Any

import httpx
import pytest
from sqlalchemy import func, insert, select, text, update

from tests.helpers import FarmProcess, jsonl, read_lines, submit, upload, wait_done
from tests.integration.test_concurrency import NO_POOL, _input_file, _running_shard_job

pytestmark = pytest.mark.integration


def _events(job_id: str, type_: str) -> list[dict[str, Any]]:
    from app.models import JobEvent
    from app.unit_of_work import session_scope

    with session_scope() as session:
        rows = session.scalars(
            select(JobEvent.data).where(JobEvent.job_id == job_id, JobEvent.type == type_)
        )
        return list(rows)


def _shard(job_id: str, index: int) -> Any:
    from app.models import JobShard
    from app.unit_of_work import session_scope

    with session_scope() as session:
        shard = session.scalars(
            select(JobShard).where(JobShard.job_id == job_id, JobShard.index == index)
        ).one()
        session.expunge(shard)
        return shard


def _job(job_id: str) -> Any:
    from app.models import Job
    from app.unit_of_work import session_scope

    with session_scope() as session:
        job = session.get_one(Job, job_id)
        session.expunge(job)
        return job


# -- 1. a job never succeeds with a line missing ----------------------------------------------


def test_lost_part_files_are_run_again_and_every_line_is_there_once(
    client: httpx.Client, cpu_worker: FarmProcess, sweeper: FarmProcess, services: dict[str, str]
) -> None:
    """Between the shards' finish and the assembly, one shard's output part is deleted and
    another's truncated: the assembly finds them short, those shards run again, and the job
    ends with each input line exactly once (the farm used to assemble the missing part as
    empty and report `succeeded` 200 lines short)."""
    from app.models import Job, JobShard, ShardStatus
    from app.storage import get_store
    from app.unit_of_work import session_scope
    from workers.tasks.results import part_uris

    rows = [{"custom_id": f"r{i}", "input": f"sentence number {i}"} for i in range(401)]
    job = submit(
        client, {"model": "minilm", "input": {"file_id": upload(client, jsonl(rows))["id"]}}
    )
    # Hold the job's lease once it is planned, as an assembly would: its shards finish, but
    # nobody assembles it until the test lets go.
    deadline = time.monotonic() + 180
    held = False
    while not held and time.monotonic() < deadline:
        with session_scope() as session:
            held = (
                session.execute(
                    update(Job)
                    .where(Job.id == job["id"], Job.shards_total.is_not(None))
                    .where(Job.lease_owner.is_(None))
                    .values(
                        lease_owner="test-hold", lease_expires_at=func.now() + timedelta(hours=1)
                    )
                ).rowcount
                == 1
            )
        time.sleep(0.02)
    assert held, "the job was not planned in time"

    def closed() -> list[Any]:
        with session_scope() as session:
            return list(
                session.scalars(
                    select(JobShard)
                    .where(JobShard.job_id == job["id"])
                    .where(JobShard.status == ShardStatus.SUCCEEDED)
                    .order_by(JobShard.index)
                )
            )

    deadline = time.monotonic() + 180
    while len(shards := closed()) < 3 and time.monotonic() < deadline:
        time.sleep(0.1)
    assert len(shards) == 3, "the shards did not all finish"
    tenant_id, store = _job(job["id"]).tenant_id, get_store()

    def part(shard: Any) -> Path:
        return store.local_path(part_uris(store, tenant_id, job["id"], shard.parts_stem)[0])

    part(shards[0]).unlink()
    truncated = part(shards[2])
    truncated.write_bytes(truncated.read_bytes()[: truncated.stat().st_size // 2])
    with session_scope() as session:  # let go: the sweeper sends the assembly
        session.execute(
            update(Job).where(Job.id == job["id"]).values(lease_owner=None, lease_expires_at=None)
        )

    done = wait_done(client, job["id"])
    assert done["status"] == "succeeded", done
    assert done["counts"]["succeeded"] == len(rows) and done["counts"]["failed"] == 0, done
    lines = read_lines(client, done["output_file_id"])
    assert sorted(line["custom_id"] for line in lines) == sorted(r["custom_id"] for r in rows)
    lost = _events(job["id"], "results_lost")
    assert lost and sorted(lost[0]["shards"]) == [0, 2], lost
    assert _shard(job["id"], 0).attempts == 2 and _shard(job["id"], 1).attempts == 1


def test_a_shard_never_closes_succeeded_with_fewer_lines_than_items(
    services: dict[str, str],
) -> None:
    """The database refuses a `succeeded` close whose lines do not cover the shard's range."""
    from app.models import JobShard, ShardStatus
    from app.services import shards
    from app.unit_of_work import session_scope

    job_id, shard_id = _running_shard_job()  # shard 0: two items
    with session_scope() as session:
        shard = session.get_one(JobShard, shard_id)
        assert not shards.finish_shard(session, shard, "worker-a", ShardStatus.SUCCEEDED, {}, 1, 0)
    assert _shard(job_id, 0).status == ShardStatus.RUNNING
    with session_scope() as session:
        shard = session.get_one(JobShard, shard_id)
        assert shards.finish_shard(session, shard, "worker-a", ShardStatus.SUCCEEDED, {}, 1, 1)
    assert _shard(job_id, 0).status == ShardStatus.SUCCEEDED


def test_result_files_are_fsynced_with_their_folder(
    services: dict[str, str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """A closed ResultWriter is on disk: the file and the folder that names it were synced."""
    import os

    from app.storage import get_store
    from workers.tasks.results import ResultWriter

    synced: list[int] = []
    real_fsync = os.fsync

    def fsync(fd: int) -> None:
        synced.append(os.fstat(fd).st_ino)
        real_fsync(fd)

    monkeypatch.setattr(os, "fsync", fsync)
    store = get_store()
    uri = store.uri("durability", secrets.token_hex(4), "part.jsonl")
    with ResultWriter(store, uri) as writer:
        writer.write([b'{"a":1}\n'])
        assert synced == []
    path = Path(store.local_path(uri))
    assert synced == [path.stat().st_ino, path.parent.stat().st_ino]


# -- 2. only the holder acts -------------------------------------------------------------------


def _taken_over(job_id: str, shard_id: int) -> Any:
    """Attempt A ("worker-a") holds shard 0; it is presumed dead and B takes it over. A's
    ShardPlan (what its task still holds) is returned."""
    from app.models import JobShard
    from app.services import shards
    from app.unit_of_work import session_scope
    from workers.runtime import ModelSpec, RunOptions
    from workers.tasks.inference import ShardPlan

    stale = _shard(job_id, 0)
    with session_scope() as session:
        taken = shards.claim_shard(session, job_id, 0, "host:2:worker-b", 60, "worker-a")
        assert taken is not None and taken.lease_owner == "host:2:worker-b"
    job = _job(job_id)
    # A model no loader takes: loading it fails for good, as a broken upload would.
    spec = ModelSpec("broken@1", "no-such-framework", "feature-extraction", "/nowhere")
    options = RunOptions(batch_tokens=64, batch_size=8, max_chars=1000, max_line_bytes=1000)
    assert isinstance(stale, JobShard)
    return ShardPlan(stale, 2, job.tenant_id, job.queue, "file:///nowhere", spec, options)


def test_a_stale_attempt_gives_back_nothing_and_sends_nothing(services: dict[str, str]) -> None:
    import redis

    from app.models import Job
    from app.unit_of_work import session_scope
    from workers.tasks import inference

    job_id, shard_id = _running_shard_job()
    queue = f"{NO_POOL}-{secrets.token_hex(3)}"
    with session_scope() as session:
        session.execute(update(Job).where(Job.id == job_id).values(queue=queue))
    plan = _taken_over(job_id, shard_id)
    inference._give_back(plan, "worker-a", "it broke")
    assert _events(job_id, "shard_released") == []
    shard = _shard(job_id, 0)
    assert (shard.status, shard.lease_owner) == ("running", "host:2:worker-b")
    client = redis.Redis.from_url(services["MODELFARM_REDIS_URL"])
    try:
        assert client.keys(f"{queue}*") == [], "a stale attempt sent a shard message"
    finally:
        client.close()


@pytest.mark.parametrize("path", ["give_back_at_max_attempts", "model_load_failed"])
def test_a_stale_attempt_cannot_fail_the_job(
    services: dict[str, str], monkeypatch: pytest.MonkeyPatch, path: str
) -> None:
    """A's last give-back (MAX_ATTEMPTS used) or its model load failing, after B took the shard
    over: the job B is running goes on."""
    from app.config import get_settings
    from workers.tasks import inference

    job_id, shard_id = _running_shard_job()
    plan = _taken_over(job_id, shard_id)
    if path == "give_back_at_max_attempts":
        monkeypatch.setattr(get_settings(), "max_attempts", 1)
        inference._give_back(plan, "worker-a", "it broke")
    else:
        inference._run_claimed(plan, "worker-a")
    job = _job(job_id)
    assert (job.status, job.error) == ("running", None)
    assert _shard(job_id, 0).lease_owner == "host:2:worker-b"


def test_the_holder_still_fails_the_job_on_a_broken_model(services: dict[str, str]) -> None:
    from workers.tasks import inference

    job_id, shard_id = _running_shard_job()
    plan = _taken_over(job_id, shard_id)
    inference._run_claimed(plan, "host:2:worker-b")
    job = _job(job_id)
    assert job.status == "failed" and job.error["code"] == "model_load_failed", job.error


def test_out_of_memory_is_a_transient_load_error() -> None:
    """A load that ran out of memory (host or GPU) is this worker's trouble: the shard is given
    back (another worker may have room), not the job failed."""
    import torch

    from workers.runtime.registry import out_of_memory

    assert out_of_memory(torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2 GiB"))
    assert out_of_memory(MemoryError())
    assert out_of_memory(RuntimeError("CUDA error: out of memory"))
    assert not out_of_memory(OSError("config.json not found"))
    assert not out_of_memory(ValueError("unknown architecture"))


# -- 3. the database's clock -------------------------------------------------------------------


@pytest.fixture
def skew(monkeypatch: pytest.MonkeyPatch) -> Any:
    """Set this process's clock, as the project reads it, `seconds` off: every module's
    `utcnow` (app.db's, and each name imported from it)."""
    from app import db

    real = db.utcnow

    def set_skew(seconds: float) -> None:
        def skewed() -> Any:
            return real() + timedelta(seconds=seconds)

        for module in list(sys.modules.values()):
            name = getattr(module, "__name__", "")
            if name.startswith(("app", "workers")) and getattr(module, "utcnow", None) is real:
                monkeypatch.setattr(module, "utcnow", skewed)

    return set_skew


def _lease_left(session: Any, job_id: str, index: int) -> float:
    from app.models import JobShard

    left = session.scalar(
        select(JobShard.lease_expires_at - func.now()).where(
            JobShard.job_id == job_id, JobShard.index == index
        )
    )
    return float(left.total_seconds())


@pytest.mark.parametrize("minutes", [-10, 10])
def test_a_skewed_worker_clock_moves_no_lease(
    services: dict[str, str], skew: Any, minutes: int
) -> None:
    """A worker whose clock is 10 minutes off claims and renews a shard of 60 s: its lease ends
    60 s from the database's now, so the sweeper neither takes it over at once (slow clock)
    nor leaves a dead one 10 minutes longer (fast clock)."""
    from app.services import shards, sweeping
    from app.unit_of_work import session_scope

    job_id, _ = _running_shard_job()
    skew(minutes * 60)
    with session_scope() as session:
        shard = shards.claim_shard(session, job_id, 0, "host:3:skewed", 60, "worker-a")
        assert shard is not None
        assert 50 < _lease_left(session, job_id, 0) <= 61
    with session_scope() as session:
        assert shards.renew_shard_lease(session, shard.id, "host:3:skewed", 60)
        assert 50 < _lease_left(session, job_id, 0) <= 61
    skew(0)
    with session_scope() as session:
        expired = sweeping.expire_shard_leases(session, 3, 500)
        assert (job_id, 0) not in [(j, i) for j, i, _ in expired.resend]
        session.rollback()


def test_a_skewed_sweeper_takes_over_nothing_early(services: dict[str, str], skew: Any) -> None:
    """A sweeper (or an assembler) 10 minutes fast sees a lease of a minute as live."""
    from app.models import Job
    from app.services import results, sweeping
    from app.unit_of_work import session_scope

    job_id, _ = _running_shard_job()
    skew(600)
    with session_scope() as session:
        expired = sweeping.expire_shard_leases(session, 3, 500)
        assert (job_id, 0) not in [(j, i) for j, i, _ in expired.resend]
        session.rollback()
    finished_id, _ = _finished_job_with_lease("host:4:assembler", seconds=60)
    with session_scope() as session:
        assert results.claim_assembly(session, finished_id, "host:5:fast", 60) is None
        assert session.get_one(Job, finished_id).lease_owner == "host:4:assembler"


def _finished_job_with_lease(owner: str, seconds: float) -> tuple[str, str]:
    from app.models import Job
    from app.unit_of_work import session_scope
    from tests.integration.test_concurrency import _finished_shards_job

    job_id, tenant_id = _finished_shards_job()
    with session_scope() as session:
        session.execute(
            update(Job)
            .where(Job.id == job_id)
            .values(lease_owner=owner, lease_expires_at=func.now() + timedelta(seconds=seconds))
        )
    return job_id, tenant_id


# -- 4. retries that cannot double-count -------------------------------------------------------


def test_a_retried_progress_write_counts_once(services: dict[str, str]) -> None:
    """The commit went through but its answer was lost: db_retry runs the write again. The
    counts are the attempt's absolute ones, so the shard and the job count its lines once."""
    from app.services import shards
    from app.unit_of_work import session_scope

    job_id, shard_id = _running_shard_job()
    for _ in range(2):  # the first commit, then its retry
        with session_scope() as session:
            progress = shards.record_shard_progress(session, shard_id, job_id, "worker-a", 1, 1, 60)
            assert progress.held
    shard = _shard(job_id, 0)
    assert (shard.succeeded, shard.failed) == (1, 1)
    job = _job(job_id)
    # Shard 1 closed with its own counts (one output, one error line) before.
    assert (job.counts_succeeded, job.counts_failed) == (2, 2)


# -- 5. a sweeper that scales ------------------------------------------------------------------


@pytest.fixture
def backlog(session: Any) -> Iterator[tuple[Any, str]]:
    """2,000 running jobs, each with a shard at work, and one stuck job whose shards are all
    closed and that nobody assembles: the oldest, written last. Rolled back afterwards."""
    from app.db import utcnow
    from app.ids import new_id
    from app.models import Job, JobShard, JobStatus, ShardStatus
    from app.services.tenants import get_or_create_tenant

    tenant = get_or_create_tenant(session, f"backlog-{secrets.token_hex(3)}")
    source = _input_file(session, tenant.id)
    now, ms = utcnow(), timedelta(milliseconds=1)
    ids = [new_id("job") for _ in range(2001)]
    stuck = ids[-1]
    session.execute(
        insert(Job),
        [
            {
                "id": job_id,
                "tenant_id": tenant.id,
                "type": "inference",
                "status": JobStatus.RUNNING,
                "model": "minilm@1",
                "device": "cpu",
                "queue": NO_POOL,
                "input_file_id": source.id,
                "params": {},
                "usage": {},
                "shards_total": 1,
                "counts_total": 1,
                "created_at": now - timedelta(hours=1) if job_id == stuck else now + i * ms,
            }
            for i, job_id in enumerate(ids)
        ],
    )
    session.execute(
        insert(JobShard),
        [
            {
                "job_id": job_id,
                "index": 0,
                "start_item": 0,
                "end_item": 1,
                "start_offset": 0,
                "start_line": 1,
                "status": ShardStatus.SUCCEEDED if job_id == stuck else ShardStatus.RUNNING,
                "lease_owner": None if job_id == stuck else "host:1:busy",
                "lease_expires_at": None if job_id == stuck else now + timedelta(minutes=5),
                "dispatched_at": now,
            }
            for job_id in ids
        ],
    )
    session.flush()
    # What autovacuum does to tables this size in a real farm: without statistics, the planner
    # takes them for empty (rolled back with the rest).
    session.execute(text("ANALYZE jobs, job_shards"))
    yield session, stuck


def test_the_sweep_finds_a_stuck_job_behind_2000_running_ones(backlog: tuple[Any, str]) -> None:
    """Its first pass finds the stuck job, and the sweeper's queries over the backlog take well
    under a second (the issue's bound; each is one ordered, filtered statement)."""
    from app.services import admission, sweeping

    session, stuck = backlog
    started = time.perf_counter()
    found = sweeping.unassembled_jobs(session, 500)
    sweeping.expire_shard_leases(session, 3, 500)
    sweeping.released_shards(session, 500)
    sweeping.dead_planners(session, 3, None, 500)
    sweeping.close_shards_of_stopping_jobs(session, 500)
    admission.holding_tenants(session, 500)
    took = time.perf_counter() - started
    assert (stuck, NO_POOL) in found
    assert found[0] == (stuck, NO_POOL)  # the oldest first
    assert took < 1.0, f"the sweep's queries took {took:.2f}s"
