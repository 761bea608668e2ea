"""Chaos: kill and restart the farm's parts mid-job; every item must come back exactly once.

These tests run their own small farm (throwaway PostgreSQL and Redis that they may stop, an
API, a CPU worker, a webhooks worker, a sweeper) with short leases, so recovery takes seconds,
not minutes. Webhook callbacks obey the same rule: a crash delays one, never drops it.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import psutil
import pytest

from app.local.embedded import (
    EmbeddedPostgres,
    EmbeddedRedis,
    free_port,
    start_postgres,
    start_redis,
)
from tests.helpers import (
    FarmProcess,
    all_pages,
    assert_error,
    jsonl,
    minilm_tokens,
    read_lines,
    submit,
    upload,
    wait_done,
    wait_for_http,
)
from tests.receiver import Reply, receiver

pytestmark = [pytest.mark.integration, pytest.mark.slow]

LEASE = 3.0
ITEMS = 240
# A job whose pool child is killed must still run a poll after its first progress, or no shard
# is repeated: 240 items take well under a second on two idle cores; 960 take about two.
KILLED_ITEMS = 4 * ITEMS


@dataclass
class ChaosFarm:
    root: Path
    pg: EmbeddedPostgres
    redis: EmbeddedRedis
    env: dict[str, str]
    api_url: str = ""
    key: str = ""
    procs: dict[str, FarmProcess] = field(default_factory=dict)

    def start(self, name: str, args: list[str]) -> FarmProcess:
        proc = FarmProcess.start(args, self.env, self.root / f"{name}-{time.monotonic_ns()}.log")
        self.procs[name] = proc
        return proc

    def start_worker(self, pool: str = "cpu") -> FarmProcess:
        name = "worker" if pool == "cpu" else f"worker-{pool}"
        worker = self.start(name, ["worker", "--pool", pool])
        worker.wait_for_log("ready.")
        return worker

    def client(self) -> httpx.Client:
        return httpx.Client(
            base_url=self.api_url, timeout=60, headers={"Authorization": f"Bearer {self.key}"}
        )

    def restart_redis(self, down_seconds: float = 1.0) -> None:
        port = int(self.redis.url.rsplit(":", 1)[1].split("/")[0])
        self.redis.stop()
        time.sleep(down_seconds)
        self.redis = start_redis(self.root / "redis", port=port)

    def stop_all(self) -> None:
        for proc in self.procs.values():
            proc.stop()


def _cli(env: dict[str, str], *args: str) -> str:
    result = subprocess.run(
        [sys.executable, "-m", "app.cli", *args],
        env={**os.environ, **env},
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 0, result.stderr
    return result.stdout.strip()


@pytest.fixture(scope="module")
def farm(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ChaosFarm]:
    root = tmp_path_factory.mktemp("chaos")
    # Outside pytest's own temp root: pytest keeps that private (0700) and, running as root,
    # PostgreSQL runs as another user that must reach its data directory.
    pg_root = Path(tempfile.mkdtemp(prefix="modelfarm-chaos-"))
    pg = start_postgres(pg_root / "pg")
    redis = start_redis(root / "redis")
    port = free_port()
    env = {
        "MODELFARM_DATABASE_URL": pg.url,
        "MODELFARM_REDIS_URL": redis.url,
        "MODELFARM_DATA_DIR": str(root / "data"),
        "MODELFARM_API_PORT": str(port),
        "MODELFARM_LEASE_SECONDS": str(LEASE),
        "MODELFARM_SWEEP_INTERVAL_SECONDS": "1",
        "MODELFARM_SHARD_ITEMS": "30",
        "MODELFARM_CHUNK_ITEMS": "10",
        "MODELFARM_DB_RETRY_SECONDS": "60",
        "MODELFARM_PRELOAD_MODELS": "minilm",
        "MODELFARM_WEBHOOK_ALLOWED_HOSTS": "127.0.0.1",
        "MODELFARM_WEBHOOK_RETRY_SCHEDULE": "1,1,1,1,1,1,1,1",
        "MODELFARM_WEBHOOK_TIMEOUT_SECONDS": "2",
        "HF_HUB_OFFLINE": "1",
    }
    farm = ChaosFarm(root, pg, redis, env)
    try:
        _cli(env, "migrate")
        farm.key = _cli(env, "keys", "create", "--tenant", "chaos")
        farm.api_url = f"http://127.0.0.1:{port}"
        api = farm.start("api", ["api"])
        farm.start("sweeper", ["sweeper"])
        farm.start_worker()
        farm.start_worker("webhooks")
        wait_for_http(f"{farm.api_url}/healthz", api)
        yield farm
    finally:
        farm.stop_all()
        farm.redis.stop()
        pg.stop()
        shutil.rmtree(pg_root, ignore_errors=True)


def _rows(n: int = ITEMS) -> list[dict[str, Any]]:
    # Long enough that a job takes a few seconds: there is time to break something mid-job.
    return [
        {"custom_id": i, "input": f"item {i}: " + "a sentence to embed " * 12} for i in range(n)
    ]


def _submit(client: httpx.Client, n: int = ITEMS) -> str:
    file = upload(client, jsonl(_rows(n)))
    return submit(client, {"model": "minilm", "input": {"file_id": file["id"]}})["id"]


def _wait_for(
    check: Callable[[], bool], timeout: float = 120, what: str = "", interval: float = 0.2
) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            if check():
                return
        except httpx.HTTPError:
            pass
        time.sleep(interval)
    raise TimeoutError(what)


def _progress(client: httpx.Client, job_id: str) -> int:
    return int(client.get(f"/v1/jobs/{job_id}").json()["counts"]["succeeded"])


def _assert_exactly_once(
    client: httpx.Client, job_id: str, n: int = ITEMS, timeout: float = 180
) -> dict[str, Any]:
    deadline = time.monotonic() + timeout
    job: dict[str, Any] = {}
    while time.monotonic() < deadline:
        try:
            job = client.get(f"/v1/jobs/{job_id}", headers={"Prefer": "wait=5"}).json()
        except httpx.HTTPError:
            time.sleep(1)
            continue
        if job.get("status") in ("succeeded", "failed", "cancelled"):
            break
    assert job.get("status") == "succeeded", job
    assert job["counts"] == {"total": n, "succeeded": n, "failed": 0}
    ids = [line["custom_id"] for line in read_lines(client, job["output_file_id"])]
    assert ids == list(range(n))  # every item, once, in input order
    assert job["error_file_id"] is None
    return job


def _pool_children(worker: FarmProcess) -> list[psutil.Process]:
    return psutil.Process(worker.proc.pid).children(recursive=True)


def _mid_shard(client: httpx.Client, job_id: str) -> bool:
    """A shard of the job has started and not ended, and no more than half its items are done."""
    events = [e["type"] for e in all_pages(client, f"/v1/jobs/{job_id}/events")]
    running = events.count("shard_started") - events.count("shard_succeeded")
    return running > 0 and _progress(client, job_id) < KILLED_ITEMS // 2


def _usage_items(client: httpx.Client) -> int:
    rows = client.get("/v1/usage", params={"group_by": "job_type"}).json()["data"]
    return sum(row["items"] for row in rows)


def test_sigkill_a_pool_child_mid_job(farm: ChaosFarm) -> None:
    with farm.client() as client:
        used_before = _usage_items(client)
        job_id = _submit(client, KILLED_ITEMS)
        # Killed only while a shard runs, in the job's first half: on a fast machine a kill
        # after the first progress could land between two shards, or after the last one.
        _wait_for(lambda: _mid_shard(client, job_id), what="no shard ran", interval=0.02)
        worker = farm.procs["worker"]
        killed_at = time.monotonic()
        for child in _pool_children(worker):
            child.send_signal(signal.SIGKILL)
        job = _assert_exactly_once(client, job_id, n=KILLED_ITEMS)
        print(f"\nrecovered from a killed pool child in {time.monotonic() - killed_at:.1f}s")
        events = [e["type"] for e in all_pages(client, f"/v1/jobs/{job_id}/events")]
        assert events.count("shard_started") > events.count("shard_succeeded")  # one repeated
        assert job["attempts"] >= 2
        # /v1/usage counts the repeated shard's items once (issue 12, part 5).
        assert _usage_items(client) - used_before == KILLED_ITEMS
        # The repeated shard's tokens are counted once: the killed attempt recorded none.
        assert job["usage"]["tokens"] == minilm_tokens([r["input"] for r in _rows(KILLED_ITEMS)])


def test_sigkill_a_pool_child_mid_batch(farm: ChaosFarm) -> None:
    """An OpenAI batch holds the same leases as a native job: a killed pool child's shard is
    run again, every request is answered once, and its tokens are counted once."""
    import json

    from openai import OpenAI

    oai = OpenAI(base_url=f"{farm.api_url}/openai/v1", api_key=farm.key, max_retries=0)
    texts = [row["input"] for row in _rows(KILLED_ITEMS)]
    request = {"method": "POST", "url": "/v1/embeddings"}
    lines = "".join(
        json.dumps({**request, "custom_id": f"r{i}", "body": {"model": "minilm", "input": t}})
        + "\n"
        for i, t in enumerate(texts)
    )
    uploaded = oai.files.create(file=("b.jsonl", lines.encode()), purpose="batch")
    batch = oai.batches.create(
        input_file_id=uploaded.id, endpoint="/v1/embeddings", completion_window="24h"
    )

    def answered() -> int:
        counts = oai.batches.retrieve(batch.id).request_counts
        return 0 if counts is None else counts.completed

    _wait_for(lambda: answered() > 0, what="batch never started")
    for child in _pool_children(farm.procs["worker"]):
        child.send_signal(signal.SIGKILL)
    _wait_for(
        lambda: oai.batches.retrieve(batch.id).status in ("completed", "failed", "cancelled"),
        timeout=180,
        what="batch never ended",
    )
    done = oai.batches.retrieve(batch.id)
    assert done.status == "completed" and done.error_file_id is None, done
    out = [json.loads(x) for x in oai.files.content(done.output_file_id).text.splitlines()]
    assert [o["custom_id"] for o in out] == [f"r{i}" for i in range(KILLED_ITEMS)]
    with farm.client() as client:
        events = [e["type"] for e in all_pages(client, f"/v1/jobs/{batch.id}/events")]
    assert events.count("shard_started") > events.count("shard_succeeded")  # one repeated
    assert done.usage is not None and done.usage.input_tokens == minilm_tokens(texts)


def test_sigkill_the_whole_worker_and_start_another(farm: ChaosFarm) -> None:
    with farm.client() as client:
        job_id = _submit(client)
        _wait_for(lambda: _progress(client, job_id) > 0, what="job never started")
        farm.procs["worker"].signal(signal.SIGKILL)
        farm.procs["worker"].proc.wait()
        killed_at = time.monotonic()
        farm.start_worker()
        _assert_exactly_once(client, job_id)
        print(
            f"\nrecovered from a killed worker in {time.monotonic() - killed_at:.1f}s "
            "(including the new worker's start)"
        )


def _validation(farm: ChaosFarm, version_id: str) -> tuple[str | None, int]:
    """(who holds the version's validation lease, attempts), from the farm's PostgreSQL."""
    import psycopg

    url = farm.pg.url.replace("postgresql+psycopg://", "postgresql://")
    with psycopg.connect(url) as conn:
        query = "SELECT lease_owner, attempts FROM model_versions WHERE id = %s"
        row = conn.execute(query, (version_id,)).fetchone()
    assert row is not None
    return row[0], int(row[1])


def test_a_worker_stopped_mid_validation_leaves_a_normal_model_to_validate_again(
    farm: ChaosFarm, tmp_path: Path
) -> None:
    """Issue 25: a validation that ran over its own limits is not tried again, but one lost with
    its worker (a cold shutdown: the message goes back to the broker) says nothing against the
    upload. A new worker takes it over and the version becomes ready."""
    from tests.factories import make_tiny_feature_extractor
    from tests.helpers import register_model, tar_of, wait_model

    model = make_tiny_feature_extractor(tmp_path / "fe")
    with farm.client() as client:
        archive = upload(client, tar_of(model), purpose="model", name="fe.tar.gz")
        body = {"name": "restarted", "framework": "transformers", "file_id": archive["id"]}
        version = register_model(client, body)
        _wait_for(
            lambda: _validation(farm, version["id"])[0] is not None,
            timeout=60,
            what="no worker took the validation",
        )
        worker = farm.procs["worker"]
        os.kill(worker.proc.pid, signal.SIGQUIT)  # Celery's cold shutdown, mid-validation
        worker.proc.wait(60)
        stopped_at = time.monotonic()
        farm.start_worker()
        ready = wait_model(client, version, timeout=180)
        print(f"\nvalidated again {time.monotonic() - stopped_at:.1f}s after its worker stopped")
    assert ready["status"] == "ready", ready
    assert _validation(farm, version["id"]) == (None, 2)  # the stopped attempt, then this one


def test_flushdb_with_jobs_queued(farm: ChaosFarm) -> None:
    import redis

    with farm.client() as client:
        farm.procs["worker"].stop()  # nothing consumes: the messages wait in Redis
        job_ids = [_submit(client, 40) for _ in range(3)]
        broker = redis.Redis.from_url(farm.redis.url)
        # Normal jobs' messages wait in kombu's list for their priority step
        # (app/broker/dispatch.py).
        assert broker.llen("cpu") + broker.llen("cpu\x06\x163") >= 3
        broker.flushdb()
        flushed_at = time.monotonic()
        farm.start_worker()
        for job_id in job_ids:
            _assert_exactly_once(client, job_id, n=40)
        print(f"\nrecovered from FLUSHDB in {time.monotonic() - flushed_at:.1f}s")


def test_redis_restart_mid_job(farm: ChaosFarm) -> None:
    with farm.client() as client:
        job_id = _submit(client)
        _wait_for(lambda: _progress(client, job_id) > 0, what="job never started")
        restarted_at = time.monotonic()
        farm.restart_redis()
        _assert_exactly_once(client, job_id)
        print(f"\nrecovered from a Redis restart in {time.monotonic() - restarted_at:.1f}s")


def test_postgres_restart_mid_job(farm: ChaosFarm) -> None:
    from pgserver._commands import pg_ctl

    server = farm.pg._server
    with farm.client() as client:
        job_id = _submit(client)
        _wait_for(lambda: _progress(client, job_id) > 0, what="job never started")
        pg_ctl(["-w", "stop", "-m", "fast"], pgdata=server.pgdata, user=server.system_user)
        stopped_at = time.monotonic()
        # While PostgreSQL is away the API says so in the error shape: 503, never 500.
        assert_error(client.get(f"/v1/jobs/{job_id}"), 503, "service_unavailable")
        time.sleep(3)
        server.ensure_postgres_running()
        _assert_exactly_once(client, job_id)
        print(f"\nrecovered from a PostgreSQL restart in {time.monotonic() - stopped_at:.1f}s")


def test_postgres_then_redis_restarted_under_load(farm: ChaosFarm) -> None:
    """Several jobs running (sharded ones and a one-task one); PostgreSQL stopped fast, every
    kind of request answered 503 in the error shape meanwhile, then Redis restarted without
    persistence (its messages gone): every job still ends with each item exactly once."""
    from pgserver._commands import pg_ctl

    server = farm.pg._server
    with farm.client() as client:
        jobs = [(_submit(client), ITEMS), (_submit(client, 90), 90)]
        small = {"model": "minilm", "input": {"items": _rows(20)}}
        jobs.append((submit(client, small)["id"], 20))
        _wait_for(lambda: _progress(client, jobs[0][0]) > 0, what="job never started")
        pg_ctl(["-w", "stop", "-m", "fast"], pgdata=server.pgdata, user=server.system_user)
        try:
            answers = [
                client.get(f"/v1/jobs/{jobs[0][0]}"),
                client.get("/v1/jobs"),
                client.post("/v1/jobs", json=small),
                client.post(
                    "/v1/files",
                    files={"file": ("x.jsonl", jsonl(_rows(3)))},
                    data={"purpose": "batch"},
                ),
                client.get("/readyz"),
            ]
            for response in answers:
                assert_error(response, 503, "service_unavailable")
            time.sleep(2)
        finally:
            server.ensure_postgres_running()
        _wait_for(lambda: _progress(client, jobs[1][0]) > 0, what="second job never started")
        farm.restart_redis()
        for job_id, n in jobs:
            _assert_exactly_once(client, job_id, n=n)


def test_broker_down_at_submit_still_answers_202(farm: ChaosFarm) -> None:
    with farm.client() as client:
        file = upload(client, jsonl(_rows(20)))
        farm.redis.stop()
        try:
            job = submit(client, {"model": "minilm", "input": {"file_id": file["id"]}})
            assert job["status"] == "queued"
        finally:
            farm.restart_redis(down_seconds=0)
        back_at = time.monotonic()
        _assert_exactly_once(client, job["id"], n=20)
        print(
            f"\nran a job submitted while the broker was down {time.monotonic() - back_at:.1f}s "
            "after it came back"
        )


def _webhook_job(client: httpx.Client, url: str) -> str:
    body = {"model": "minilm", "input": {"items": _rows(5)}, "webhook": {"url": url}}
    return str(submit(client, body)["id"])


def test_webhook_worker_killed_mid_attempt(farm: ChaosFarm) -> None:
    with farm.client() as client, receiver() as hook:
        hook.script = [Reply(200, delay=30)]  # the first attempt hangs in the receiver
        job_id = _webhook_job(client, hook.url)
        (first,) = hook.wait_for(1, timeout=120)
        farm.procs["worker-webhooks"].signal(signal.SIGKILL)
        farm.procs["worker-webhooks"].proc.wait()
        killed_at = time.monotonic()
        farm.start_worker("webhooks")
        _, again = hook.wait_for(2, timeout=120)
        print(f"\nwebhook re-sent {time.monotonic() - killed_at:.1f}s after its worker was killed")
        assert again.headers["webhook-id"] == first.headers["webhook-id"]
        assert again.body == first.body
        _wait_for(
            lambda: all_pages(client, f"/v1/jobs/{job_id}/deliveries")[0]["status"] == "succeeded",
            what="delivery never succeeded",
        )
        (delivery,) = all_pages(client, f"/v1/jobs/{job_id}/deliveries")
        assert "worker stopped" in delivery["attempts"][0]["error"]


def test_webhook_survives_flushdb(farm: ChaosFarm) -> None:
    import redis

    with farm.client() as client, receiver() as hook:
        farm.procs["worker-webhooks"].stop()  # the delivery message waits in Redis
        job_id = _webhook_job(client, hook.url)
        wait_done(client, job_id)
        broker = redis.Redis.from_url(farm.redis.url)
        _wait_for(lambda: broker.llen("webhooks") >= 1, what="no delivery message queued")
        broker.flushdb()
        flushed_at = time.monotonic()
        farm.start_worker("webhooks")
        (request,) = hook.wait_for(1, timeout=120)
        print(f"\nwebhook delivered {time.monotonic() - flushed_at:.1f}s after FLUSHDB")
        assert request.event["type"] == "job.succeeded" and request.event["data"]["id"] == job_id


def test_training_resumes_from_its_checkpoint_after_a_crash(
    farm: ChaosFarm, tmp_path: Path
) -> None:
    from tests.factories import make_tiny_feature_extractor
    from tests.integration.test_training import register_archive, sentiment_rows

    with farm.client() as client, receiver() as hook:
        base = make_tiny_feature_extractor(tmp_path / "base")
        register_archive(client, base, "tiny-base", "feature-extraction")
        file = upload(client, jsonl(sentiment_rows(600)), purpose="training")
        body = {
            "type": "training",
            "framework": "transformers",
            "input": {"file_id": file["id"]},
            "params": {"base_model": "tiny-base", "epochs": 4, "batch_size": 4},
            "output_model": "resumed",
            "webhook": {"url": hook.url, "events": ["job.started", "job.succeeded"]},
        }
        job_id = submit(client, body)["id"]

        def events() -> list[dict[str, Any]]:
            return list(all_pages(client, f"/v1/jobs/{job_id}/events"))

        _wait_for(lambda: any(e["type"] == "checkpoint" for e in events()), what="no checkpoint")
        for child in _pool_children(farm.procs["worker"]):
            child.send_signal(signal.SIGKILL)
        job = wait_done(client, job_id, timeout=180)
        assert job["status"] == "succeeded", job
        assert job["attempts"] == 2 and job["result"]["model"] == "resumed@1"
        log = events()
        resumed = [e["data"]["epoch"] for e in log if e["type"] == "resumed_from_checkpoint"]
        saved = [e["data"]["epoch"] for e in log if e["type"] == "checkpoint"]
        assert len(resumed) == 1 and 1 <= resumed[0] < 4, log
        # Epochs before the crash were not trained again: each epoch checkpointed once.
        assert sorted(saved) == [1, 2, 3, 4], saved
        assert job["progress"]["step"] == job["progress"]["steps_total"]
        hook.wait_for(2)
        time.sleep(1)
        assert sorted(hook.events()) == ["job.started", "job.succeeded"]  # one start, not two


def test_image_training_resumes_from_its_checkpoint_after_a_crash(farm: ChaosFarm) -> None:
    from tests.images import digits_pngs, zip_of

    pictures, labels = digits_pngs()
    members = [(f"{labels[i]}/{i}.png", pictures[i]) for i in range(400)]
    with farm.client() as client:
        file = upload(client, zip_of(members), purpose="training", name="digits.zip")
        body = {
            "type": "training",
            "framework": "transformers",
            "task": "image-classification",
            "input": {"file_id": file["id"]},
            "params": {"image_size": 16, "epochs": 4, "batch_size": 16},
            "output_model": "digits-resumed",
        }
        job_id = submit(client, body)["id"]

        def events() -> list[dict[str, Any]]:
            return list(all_pages(client, f"/v1/jobs/{job_id}/events"))

        _wait_for(lambda: any(e["type"] == "checkpoint" for e in events()), what="no checkpoint")
        for child in _pool_children(farm.procs["worker"]):
            child.send_signal(signal.SIGKILL)
        job = wait_done(client, job_id, timeout=300)
        assert job["status"] == "succeeded", job
        assert job["attempts"] == 2 and job["result"]["model"] == "digits-resumed@1"
        log = events()
        resumed = [e["data"]["epoch"] for e in log if e["type"] == "resumed_from_checkpoint"]
        saved = [e["data"]["epoch"] for e in log if e["type"] == "checkpoint"]
        assert len(resumed) == 1 and 1 <= resumed[0] < 4, log
        assert sorted(saved) == [1, 2, 3, 4], saved  # no epoch trained twice
        assert job["result"]["metrics"]["validation_examples"] == 80
