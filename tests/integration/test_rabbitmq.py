"""RabbitMQ as the broker (MODELFARM_BROKER_URL=amqp://...), in a virtual host of its own.

The sweeper cannot look into RabbitMQ's queues as it does into Redis's lists, so there it goes
by the database: queued work whose message was published BROKER_REDELIVER_SECONDS ago and has
not started is published again. A purged queue (a lost message) is refilled within seconds.
"""

from __future__ import annotations

import secrets
import shutil
import socket
import subprocess
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import httpx
import pytest

from tests.farms import side_farm
from tests.helpers import FarmProcess, all_pages, read_lines, run_job, submit, wait_done
from tests.receiver import Reply, receiver

pytestmark = [pytest.mark.integration, pytest.mark.slow]

HOST, PORT, MANAGEMENT = "127.0.0.1", 5672, 15672
GUEST = ("guest", "guest")


def _listening(port: int) -> bool:
    try:
        with socket.create_connection((HOST, port), timeout=1):
            return True
    except OSError:
        return False


def _rabbitmqctl(*args: str) -> bool:
    if shutil.which("rabbitmqctl") is None:
        return False
    done = subprocess.run(["rabbitmqctl", *args], capture_output=True, timeout=60)
    return done.returncode == 0


def _management(method: str, path: str) -> bool:
    try:
        response = httpx.request(
            method, f"http://{HOST}:{MANAGEMENT}/api/{path}", auth=GUEST, json={}, timeout=5
        )
    except httpx.HTTPError:
        return False
    return response.status_code < 300


@pytest.fixture(scope="module")
def rabbitmq_vhost() -> Iterator[str]:
    """A fresh virtual host, so the test's queues collide with nothing on the server."""
    if not _listening(PORT):
        pytest.skip(f"no RabbitMQ listening on {HOST}:{PORT}")
    vhost = f"modelfarm-test-{secrets.token_hex(4)}"
    if _rabbitmqctl("add_vhost", vhost):
        assert _rabbitmqctl("set_permissions", "-p", vhost, GUEST[0], ".*", ".*", ".*")
        try:
            yield vhost
        finally:
            _rabbitmqctl("delete_vhost", vhost)
    elif _management("PUT", f"vhosts/{vhost}"):
        assert _management("PUT", f"permissions/{vhost}/{GUEST[0]}")
        try:
            yield vhost
        finally:
            _management("DELETE", f"vhosts/{vhost}")
    else:
        pytest.skip("RabbitMQ is reachable but no virtual host can be made for the test")


def _ready_messages(url: str, queue: str) -> int:
    from kombu import Connection

    with Connection(url, connect_timeout=5) as conn:
        return int(conn.default_channel.queue_declare(queue=queue, passive=True).message_count)


def _purge(url: str, queue: str) -> None:
    from kombu import Connection

    with Connection(url, connect_timeout=5) as conn:
        conn.default_channel.queue_purge(queue)


@contextmanager
def _stopping(proc: FarmProcess) -> Iterator[FarmProcess]:
    try:
        yield proc
    finally:
        proc.stop()


def _wait_for(check: object, timeout: float, what: str) -> float:
    start = time.monotonic()
    while time.monotonic() - start < timeout:
        if check():  # type: ignore[operator]
            return time.monotonic() - start
        time.sleep(0.2)
    raise TimeoutError(f"{what} not seen in {timeout}s")


def test_jobs_run_on_rabbitmq_and_a_lost_message_is_published_again(
    services: dict[str, str], rabbitmq_vhost: str, tmp_path: Path
) -> None:
    broker = f"amqp://guest:guest@{HOST}:{PORT}/{rabbitmq_vhost}"
    overrides = {"MODELFARM_BROKER_URL": broker, "MODELFARM_BROKER_REDELIVER_SECONDS": "3"}
    with side_farm(services, overrides, tmp_path / "logs", sweeper=True) as farm:
        assert "Connected to amqp://" in farm.worker.output()
        hooks = FarmProcess.start(
            ["worker", "--pool", "webhooks"], farm.env, tmp_path / "logs" / "webhooks.log"
        )
        with farm.client() as client, receiver() as hook, _stopping(hooks):
            hook.script = [Reply(500)]  # the retry goes through the broker as a countdown
            rows = [{"custom_id": i, "input": f"sentence {i}"} for i in range(250)]
            job = run_job(client, "minilm", rows, webhook={"url": hook.url})  # two shards
            assert job["status"] == "succeeded", job
            hooks.wait_for_log("ready.")
            first, second = hook.wait_for(2)[:2]
            assert first.headers["webhook-id"] == second.headers["webhook-id"]
            assert second.event["type"] == "job.succeeded"
            hooks.stop()

            # No worker takes messages now: the job's message waits on the durable queue.
            farm.worker.stop()
            lost = submit(client, {"model": "minilm", "input": {"items": [{"input": "hi"}]}})
            _wait_for(lambda: _ready_messages(broker, "cpu") >= 1, 10, "the job's message")
            _purge(broker, "cpu")  # a lost message, as a broker failover may lose one
            waited = _wait_for(
                lambda: _ready_messages(broker, "cpu") >= 1, 30, "the message published again"
            )
            assert waited < 15, waited  # BROKER_REDELIVER_SECONDS + a sweep, not an hour

            worker = FarmProcess.start(
                ["worker", "--pool", "cpu"], farm.env, tmp_path / "logs" / "worker2.log"
            )
            try:
                done = wait_done(client, lost["id"])
                time.sleep(2)  # the copies published while no worker ran find nothing to do
            finally:
                worker.stop()
            assert done["status"] == "succeeded", done
            events = [e["type"] for e in all_pages(client, f"/v1/jobs/{lost['id']}/events")]
            assert "redispatched" in events, events
            assert events.count("running") == 1, events  # the copies ran it once


def test_the_gpu_pool_runs_on_rabbitmq(
    services: dict[str, str], rabbitmq_vhost: str, tmp_path: Path
) -> None:
    """Every pool takes its work from RabbitMQ: the GPU pool's own code path (one process per
    GPU under its supervisor), run on the CPU by the device override, on a two-shard job."""
    broker = f"amqp://guest:guest@{HOST}:{PORT}/{rabbitmq_vhost}"
    with side_farm(services, {"MODELFARM_BROKER_URL": broker}, tmp_path / "logs") as farm:
        gpu_env = {**farm.env, "MODELFARM_DEVICE_OVERRIDE": "cpu", "MODELFARM_GPU_COUNT": "1"}
        gpu = FarmProcess.start(["worker", "--pool", "gpu"], gpu_env, tmp_path / "logs" / "gpu.log")
        with farm.client() as client, _stopping(gpu):
            gpu.wait_for_log("pool=gpu device=cpu")
            assert "Connected to amqp://" in gpu.output()
            rows = [{"custom_id": i, "input": f"sentence {i}"} for i in range(250)]
            job = run_job(client, "minilm", rows, device="gpu")  # SHARD_ITEMS=200: two shards
            assert job["status"] == "succeeded" and job["queue"] == "gpu", job
            events = all_pages(client, f"/v1/jobs/{job['id']}/events")
            (planned,) = [e["data"] for e in events if e["type"] == "planned"]
            assert planned["shards"] == 2, events
            running = next(e["data"] for e in events if e["type"] == "running")
            assert running["worker"].startswith("gpu0@"), running
            dispatched = [e["data"]["queue"] for e in events if e["type"] == "shard_dispatched"]
            assert dispatched == ["gpu", "gpu"], events
            out = read_lines(client, job["output_file_id"])
            assert [r["custom_id"] for r in out] == list(range(250))
