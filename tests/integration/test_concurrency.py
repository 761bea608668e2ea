"""Work that overlaps: two assemblies (or training attempts) of one job, a shard's write beside
a cancel, a transaction that loses a lock race. Real PostgreSQL and the real artifact store;
the code under test is the workers' and the services' own."""

from __future__ import annotations

import hashlib
from datetime import timedelta
from typing import Any

import pytest
from sqlalchemy import func, select, update

pytestmark = pytest.mark.integration

#: The queue of the jobs these tests make by hand. No pool serves it, so the session's real
#: worker and the cpu pool's scheduler never see them: a shard of theirs released to a real
#: worker, or counted in the cpu window, would hold up the real jobs of later tests.
NO_POOL = "no-pool"

PARTS = [
    (b'{"custom_id":"a","output":1}\n{"custom_id":"b","output":2}\n', b""),
    (b'{"custom_id":"c","output":3}\n', b'{"custom_id":"d","error":{"code":"x"},"line":4}\n'),
]


def _input_file(session: Any, tenant_id: str, items: int | None = None) -> Any:
    """An input File row that no test reads (the jobs over it are driven by hand)."""
    from app.models import File, FilePurpose

    source = File(
        tenant_id=tenant_id,
        purpose=FilePurpose.BATCH,
        filename="in.jsonl",
        uri="file:///nowhere",
        bytes=0,
        sha256="0" * 64,
        items=items,
    )
    session.add(source)
    session.flush()
    return source


def _finished_shards_job() -> tuple[str, str]:
    """A job whose two shards are done, their part files written: waiting to be assembled."""
    from app.models import Job, JobShard, JobStatus, ShardStatus
    from app.services.tenants import get_or_create_tenant
    from app.storage import get_store
    from app.unit_of_work import session_scope
    from workers.tasks.results import part_uris

    store = get_store()
    with session_scope() as session:
        tenant = get_or_create_tenant(session, "assembly")
        source = _input_file(session, tenant.id)
        job = Job(
            tenant_id=tenant.id,
            type="inference",
            status=JobStatus.RUNNING,
            model="minilm@1",
            device="cpu",
            queue=NO_POOL,
            input_file_id=source.id,
            params={},
            usage={},
            shards_total=len(PARTS),
            counts_total=4,
        )
        session.add(job)
        session.flush()
        start = 0
        for index, (out, err) in enumerate(PARTS):
            # Its close recorded the lines of its part files, one per item of its range.
            lines = (out.count(b"\n"), err.count(b"\n"))
            session.add(
                JobShard(
                    job_id=job.id,
                    index=index,
                    start_item=start,
                    end_item=start + sum(lines),
                    start_offset=0,
                    start_line=1,
                    status=ShardStatus.SUCCEEDED,
                    succeeded=lines[0],
                    failed=lines[1],
                    attempts=1,
                    parts_attempt=1,  # no parts_stem: named as before migration 0015
                )
            )
            start += sum(lines)
            out_uri, err_uri = part_uris(store, tenant.id, job.id, f"{index:06d}-1")
            for uri, data in ((out_uri, out), (err_uri, err)):
                with store.open(uri, "wb") as f:
                    f.write(data)
        return job.id, tenant.id


def _job_row(job_id: str) -> dict[str, Any]:
    from app.models import Job
    from app.unit_of_work import session_scope

    with session_scope() as session:
        job = session.get_one(Job, job_id)
        return {
            c: getattr(job, c)
            for c in (
                "status",
                "output_file_id",
                "error_file_id",
                "counts_succeeded",
                "finished_at",
            )
        }


def test_a_late_assembly_never_overwrites_the_winners_results(services: dict[str, str]) -> None:
    from app.models import File, FilePurpose, Job
    from app.storage import get_store
    from app.unit_of_work import session_scope
    from workers.tasks import assemble

    job_id, tenant_id = _finished_shards_job()
    late = assemble._claim(job_id, "late-owner")
    assert late is not None
    # The late assembly stalls past its lease; the sweeper's re-sent assembly takes over.
    with session_scope() as session:
        session.execute(
            update(Job)
            .where(Job.id == job_id)
            .values(lease_expires_at=func.now() - timedelta(seconds=1))
        )
    assemble.assemble_job(job_id)
    won = _job_row(job_id)
    assert won["status"] == "succeeded" and won["counts_succeeded"] == 3
    store = get_store()
    with session_scope() as session:
        out = session.get_one(File, won["output_file_id"])
        err = session.get_one(File, won["error_file_id"])
        out_uri, err_uri, out_sha, err_sha = out.uri, err.uri, out.sha256, err.sha256

    # What the late one copies differs from what the winner copied: were it to write where the
    # winner's files are, their bytes would change.
    from workers.tasks.results import part_uris

    with store.open(part_uris(store, tenant_id, job_id, "000000-1")[0], "wb") as f:
        f.write(b'{"custom_id":"late","output":0}\n')
    assert assemble._assemble_claimed(job_id, "late-owner", late) is False
    assert _job_row(job_id) == won  # the loser changed nothing of the job
    # The winner's own end, run again (its commit went through, the answer was lost): it is
    # told it won, so it keeps its files; anyone else's files are told they lost.
    from app.services.results import ResultFile, complete_job

    with session_scope() as session:
        again = ResultFile(out_uri, 0, out_sha, 3)
        assert complete_job(session, job_id, tenant_id, again, again, True, "other") is True
        elsewhere = ResultFile(out_uri + ".x", 0, out_sha, 3)
        assert complete_job(session, job_id, tenant_id, elsewhere, elsewhere, True, None) is False
    assert _job_row(job_id) == won
    for uri, sha in ((out_uri, out_sha), (err_uri, err_sha)):
        with store.open(uri, "rb") as f:
            assert hashlib.sha256(f.read()).hexdigest() == sha  # and nothing of its files
    with store.open(out_uri, "rb") as f:
        assert f.read() == PARTS[0][0] + PARTS[1][0]
    with session_scope() as session:
        results = session.scalar(
            select(func.count()).where(
                File.tenant_id == tenant_id,
                File.purpose.in_([FilePurpose.BATCH_OUTPUT, FilePurpose.BATCH_ERROR]),
            )
        )
    assert results == 2  # the winner's two rows: the loser registered none
    late_dir = store.local_path(store.uri("tenants", tenant_id, "jobs", job_id, "results"))
    assert len(list(late_dir.iterdir())) == 1  # the loser's own files are gone


def test_an_assembly_that_lost_its_lease_before_starting_writes_nothing(
    services: dict[str, str],
) -> None:
    from app.models import Job
    from app.unit_of_work import session_scope
    from workers.tasks import assemble

    job_id, _ = _finished_shards_job()
    late = assemble._claim(job_id, "first")
    assert late is not None
    with session_scope() as session:  # another owner holds the lease now
        session.execute(update(Job).where(Job.id == job_id).values(lease_owner="second"))
    before = _job_row(job_id)
    assert assemble._assemble_claimed(job_id, "first", late) is False
    assert _job_row(job_id) == before and before["output_file_id"] is None


def _running_shard_job() -> tuple[str, int]:
    from app.models import JobShard, ShardStatus
    from app.unit_of_work import session_scope

    job_id, _ = _finished_shards_job()
    with session_scope() as session:
        shard = session.scalars(
            select(JobShard).where(JobShard.job_id == job_id, JobShard.index == 0)
        ).one()
        shard.status, shard.lease_owner = ShardStatus.RUNNING, "worker-a"
        shard.lease_expires_at = func.now() + timedelta(minutes=5)
        return job_id, shard.id


@pytest.mark.parametrize("path", ["record", "finish", "release"])
def test_shard_writes_lock_the_job_row_before_the_shard(
    services: dict[str, str], path: str
) -> None:
    """One lock order: while another transaction holds the job row (as a cancel does), a
    shard's write waits for it *before* touching the shard, so it never holds the shard while
    waiting for the job (the other half of a deadlock)."""
    import threading

    from app.db import get_engine
    from app.models import Job, JobShard, ShardStatus
    from app.services import shards
    from app.unit_of_work import session_scope

    job_id, shard_id = _running_shard_job()

    def write() -> None:
        with session_scope() as session:
            shard = session.get_one(JobShard, shard_id)
            if path == "record":
                shards.record_shard_progress(session, shard_id, job_id, "worker-a", 1, 0, 60)
            elif path == "finish":
                shards.finish_shard(session, shard, "worker-a", ShardStatus.SUCCEEDED, {})
            else:
                shards.release_shard(session, shard, "worker-a", "test")

    with get_engine().connect() as holder:
        holder.execute(select(Job.id).where(Job.id == job_id).with_for_update(key_share=True))
        writer = threading.Thread(target=write)
        writer.start()
        writer.join(timeout=1.0)
        assert writer.is_alive(), "the write did not wait for the job row"
        with get_engine().connect() as probe:
            # NOWAIT: fails at once if the waiting writer had locked the shard already.
            probe.execute(
                select(JobShard.id).where(JobShard.id == shard_id).with_for_update(nowait=True)
            )
            probe.rollback()
        holder.rollback()
    writer.join(timeout=10)
    assert not writer.is_alive()


def test_a_shard_run_twice_counts_its_tokens_once(services: dict[str, str]) -> None:
    """Worker A's shard is taken over by B (A was thought dead): A's late finish records
    nothing, B's records its tokens, and B's finish run again (a commit whose answer was lost)
    adds nothing. The job's tokens are the sum over its shards, each counted once."""
    from app.models import Job, JobShard, ShardStatus
    from app.services import shards
    from app.unit_of_work import session_scope

    job_id, shard_id = _running_shard_job()
    with session_scope() as session:  # the other shard closed already, having read 5 tokens
        session.execute(
            update(JobShard).where(JobShard.job_id == job_id, JobShard.index == 1).values(tokens=5)
        )
    with session_scope() as session:
        taken = shards.claim_shard(session, job_id, 0, "worker-b", 60, takeover_of="worker-a")
        assert taken is not None and taken.attempts == 2

    def finish(owner: str, tokens: int) -> bool:
        with session_scope() as session:
            shard = session.get_one(JobShard, shard_id)
            usage = {"cpu_seconds": 1.0}
            return shards.finish_shard(
                session, shard, owner, ShardStatus.SUCCEEDED, usage, 2, 0, tokens=tokens
            )

    def job_tokens() -> tuple[int, int]:
        with session_scope() as session:
            job = session.get_one(Job, job_id)
            return job.usage.get("tokens", 0), session.get_one(JobShard, shard_id).tokens

    assert finish("worker-a", 1000) is False  # lost its lease: records nothing
    assert job_tokens() == (0, 0)
    assert finish("worker-b", 70) is True  # no shard left: the job assembles next
    assert job_tokens() == (75, 70)
    assert finish("worker-b", 70) is False
    assert job_tokens() == (75, 70)


def test_overlapping_training_attempts_keep_their_checkpoints_apart(
    services: dict[str, str], tmp_path: Any
) -> None:
    """Each attempt writes checkpoints into its own folder and only the lease holder's are
    recorded, so a stale attempt can neither overwrite nor delete what the next one resumes."""
    from app.models import Job
    from app.storage import get_store
    from app.unit_of_work import session_scope
    from workers.tasks import training

    job_id, tenant_id = _finished_shards_job()  # any job row will do: only its lease matters
    store = get_store()

    def save(owner: str, epoch: int, content: bytes) -> bool:
        local = tmp_path / owner / "checkpoints"
        (local / f"epoch-{epoch}").mkdir(parents=True, exist_ok=True)
        (local / f"epoch-{epoch}" / "weights").write_bytes(content)
        return training._save_checkpoint(store, tenant_id, job_id, owner, local, epoch)

    def resumed() -> tuple[int | None, bytes | None]:
        local = tmp_path / f"resume-{len(list(tmp_path.iterdir()))}"
        epoch = training._resume_checkpoint(store, tenant_id, job_id, local)
        weights = local / f"epoch-{epoch}" / "weights"
        return epoch, weights.read_bytes() if weights.exists() else None

    def hold(owner: str) -> None:
        with session_scope() as session:
            session.execute(update(Job).where(Job.id == job_id).values(lease_owner=owner))

    assert resumed() == (None, None)
    hold("host:1:a")
    assert save("host:1:a", 1, b"A1") is True
    assert save("host:2:b", 2, b"B2") is False  # not the lease holder: not recorded
    assert resumed() == (1, b"A1")
    hold("host:2:b")  # the second attempt took the job over
    assert save("host:2:b", 2, b"B2") is True
    assert save("host:1:a", 3, b"A3") is False  # the stale one goes on, and changes nothing
    assert resumed() == (2, b"B2")


def test_a_lost_lock_race_is_run_again(services: dict[str, str]) -> None:
    """PostgreSQL answers 40P01 (deadlock detected) to the first try: the work runs again in
    a fresh transaction and its answer comes back; other errors are not retried."""
    from sqlalchemy import text
    from sqlalchemy.exc import DataError, OperationalError

    from app.unit_of_work import run_retrying

    tries = []

    def work(session: Any) -> int:
        tries.append(1)
        if len(tries) == 1:
            session.execute(text("DO $$ BEGIN RAISE EXCEPTION USING ERRCODE = '40P01'; END $$"))
        return int(session.execute(text("SELECT 41 + 1")).scalar_one())

    assert run_retrying(work) == 42 and len(tries) == 2

    def always(session: Any) -> int:
        session.execute(text("DO $$ BEGIN RAISE EXCEPTION USING ERRCODE = '40001'; END $$"))
        return 0

    with pytest.raises(OperationalError):
        run_retrying(always, attempts=3)

    tries.clear()

    def broken(session: Any) -> int:
        tries.append(1)
        session.execute(text("SELECT 1 / 0"))
        return 0

    with pytest.raises(DataError):
        run_retrying(broken)
    assert len(tries) == 1


def test_the_broker_scan_reads_in_pages_and_gives_up_past_its_bound(
    services: dict[str, str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """The sweeper's view of the broker: every waiting message is seen, read a page at a time;
    past MAX_MESSAGES the scan answers None (cannot tell) rather than hold them all."""
    import secrets

    import redis

    from app.broker import scan as broker_scan
    from app.broker.dispatch import TASK_PLAN_JOB, publish

    queue = f"scan-{secrets.token_hex(4)}"
    count = broker_scan.PAGE * 2 + 500
    for i in range(count):
        assert publish(TASK_PLAN_JOB, [f"job_{i}"], queue)
    try:
        url = services["MODELFARM_REDIS_URL"]
        live = broker_scan.live_task_keys(url, (queue,), 60)
        assert live == {(TASK_PLAN_JOB, (f"job_{i}",)) for i in range(count)}
        monkeypatch.setattr(broker_scan, "MAX_MESSAGES", count - 1)
        assert broker_scan.live_task_keys(url, (queue,), 60) is None
    finally:
        redis.Redis.from_url(services["MODELFARM_REDIS_URL"]).delete(queue)


@pytest.fixture
def claims() -> Any:
    """The jobs of tenant `claims` are removed afterwards: their fake shards, claimed by owners
    that never run them, would otherwise hold the pool's window for the tests that follow."""
    yield
    from sqlalchemy import delete

    from app.models import Job, Tenant
    from app.unit_of_work import session_scope

    with session_scope() as session:
        tenant = select(Tenant.id).where(Tenant.name == "claims").scalar_subquery()
        session.execute(delete(Job).where(Job.tenant_id == tenant))


def _queued_job(shards: int, webhook: dict[str, Any] | None = None) -> str:
    """A queued job over an inline input of `shards` items, one item a shard once planned
    (`shards` > 1: planned already, its shards queued and released, as by the scheduler)."""
    from app.db import utcnow
    from app.models import Job, JobShard, JobStatus
    from app.services.tenants import get_or_create_tenant
    from app.unit_of_work import session_scope

    with session_scope() as session:
        tenant = get_or_create_tenant(session, "claims")
        source = _input_file(session, tenant.id, shards)
        job = Job(
            tenant_id=tenant.id,
            type="inference",
            status=JobStatus.QUEUED if shards == 1 else JobStatus.RUNNING,
            model="minilm@1",
            device="cpu",
            queue=NO_POOL,
            input_file_id=source.id,
            params={},
            usage={},
            webhook=webhook,
            shards_total=None if shards == 1 else shards,
            counts_total=shards,
        )
        session.add(job)
        session.flush()
        if shards > 1:
            for index in range(shards):
                session.add(
                    JobShard(
                        job_id=job.id,
                        index=index,
                        start_item=index,
                        end_item=index + 1,
                        start_offset=0,
                        start_line=index + 1,
                        dispatched_at=utcnow(),
                    )
                )
        return job.id


def _commit_waits(session: Any) -> bool:
    from sqlalchemy import text

    return session.scalar(text("SHOW synchronous_commit")) != "off"


def test_a_claim_commits_without_waiting_for_its_wal_unless_it_queued_a_webhook(
    services: dict[str, str], claims: None
) -> None:
    """A claim undone by a crash is redone (see db.skip_commit_wait), so it does not wait for
    the disk; a claim that queued `job.started` does, since that webhook may go out at once."""
    from app.services import planning
    from app.unit_of_work import session_scope

    def claim_in_its_claim(job_id: str) -> bool:
        with session_scope() as session:
            claimed = planning.claim_job(
                session, job_id, "host:1:aaaa", "w", 60, 3, lambda _: False, lambda _: 100
            )
            assert claimed is not None and claimed.shard is not None  # planned in the claim
            return _commit_waits(session)

    assert claim_in_its_claim(_queued_job(1)) is False
    webhook = {"url": "https://example.com/hook", "events": ["job.started"]}
    assert claim_in_its_claim(_queued_job(1, webhook)) is True

    job_id = _queued_job(2)
    with session_scope() as session:
        shard = planning.claim_shard(session, job_id, 1, "host:1:bbbb", 60, 3, lambda _: False)
        assert shard is not None and _commit_waits(session) is False
    with session_scope() as session:  # anything else still waits, as before
        assert _commit_waits(session) is True


def test_a_claim_made_twice_with_one_attempt_number_keeps_its_part_files_apart(
    services: dict[str, str], claims: None
) -> None:
    """A claim that a database crash undid leaves its worker running; the shard is claimed
    again with the same attempt number. Their part files differ by owner, and the job's result
    is the parts of the attempt that closed the shard, whatever the other writes after."""
    from app.models import File, Job, JobShard, ShardStatus
    from app.services import planning
    from app.services import shards as shard_service
    from app.storage import get_store
    from app.unit_of_work import session_scope
    from workers.tasks import assemble
    from workers.tasks.results import ResultWriter, part_uris

    job_id = _queued_job(2)
    store = get_store()

    def claim(index: int, owner: str) -> JobShard:
        with session_scope() as session:
            shard = planning.claim_shard(session, job_id, index, owner, 60, 3, lambda _: False)
            assert shard is not None
            session.expunge(shard)
            return shard

    def write(shard: JobShard, owner: str, line: bytes) -> tuple[str, str]:
        stem = shard_service.parts_stem(shard.index, shard.attempts, owner)
        with session_scope() as session:
            tenant_id = session.get_one(Job, job_id).tenant_id
        out_uri, err_uri = part_uris(store, tenant_id, job_id, stem)
        with ResultWriter(store, out_uri) as out, ResultWriter(store, err_uri):
            out.write([line])
        return out_uri, err_uri

    def finish(shard: JobShard, owner: str) -> bool:
        with session_scope() as session:
            return shard_service.finish_shard(
                session, shard, owner, ShardStatus.SUCCEEDED, {"cpu_seconds": 0.0}, 1, 0
            )

    first = claim(0, "host:1:aaaa")
    with session_scope() as session:  # the crash undoes the first claim
        session.execute(
            update(JobShard)
            .where(JobShard.job_id == job_id, JobShard.index == 0)
            .values(status=ShardStatus.QUEUED, attempts=0, lease_owner=None, lease_expires_at=None)
        )
    second = claim(0, "host:2:bbbb")
    assert first.attempts == second.attempts == 1
    won = write(second, "host:2:bbbb", b'{"custom_id":"a","output":"second"}\n')
    assert finish(second, "host:2:bbbb") is False  # shard 1 is still to run
    # The first worker goes on: its files are its own, and its close is refused.
    lost = write(first, "host:1:aaaa", b'{"custom_id":"a","output":"first"}\n')
    assert lost != won
    assert finish(first, "host:1:aaaa") is False
    other = claim(1, "host:2:bbbb")
    write(other, "host:2:bbbb", b'{"custom_id":"b","output":"other"}\n')
    assert finish(other, "host:2:bbbb") is True

    assemble.assemble_job(job_id)
    with session_scope() as session:
        job = session.get_one(Job, job_id)
        assert job.status == "succeeded"
        output_uri = session.get_one(File, job.output_file_id).uri
    with store.open(output_uri, "rb") as f:
        assert f.read() == (
            b'{"custom_id":"a","output":"second"}\n{"custom_id":"b","output":"other"}\n'
        )
