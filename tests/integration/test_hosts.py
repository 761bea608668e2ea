"""Many machines: PostgreSQL, Redis and S3 on one host, the API on another, CPU workers on two
more, each a network namespace of its own (tests/hosts.py) reached only over TCP.

A batch job's shards run on both worker hosts; one host then loses every process at once
(SIGKILL), mid-shard, and the job still succeeds with every item exactly once, read back
through the API from a fifth host.
"""

from __future__ import annotations

import signal
import time
from collections.abc import Iterator
from typing import Any

import httpx
import pytest

from tests.helpers import all_pages, jsonl, read_lines, submit, upload, wait_done
from tests.hostfarm import HostFarm, host_farm
from tests.hosts import why_no_namespaces

pytestmark = [pytest.mark.integration, pytest.mark.slow]

ITEMS = 480
SHARD_ITEMS = 30
LEASE = 3.0


@pytest.fixture(scope="module")
def farm(tmp_path_factory: pytest.TempPathFactory) -> Iterator[HostFarm]:
    reason = why_no_namespaces()
    if reason:
        pytest.skip(f"no hosts of its own can be made here: {reason}")
    overrides = {
        "MODELFARM_SHARD_ITEMS": str(SHARD_ITEMS),
        "MODELFARM_CHUNK_ITEMS": "10",
        "MODELFARM_LEASE_SECONDS": str(LEASE),
        "MODELFARM_SWEEP_INTERVAL_SECONDS": "1",
    }
    with host_farm(tmp_path_factory.mktemp("hosts"), 2, overrides) as farm:
        yield farm


def _runs(events: list[dict[str, Any]]) -> tuple[dict[int, str], dict[int, str]]:
    """(host of each shard's latest start, host that ran each finished shard), from the job's
    events: a lease owner is `host:pid:nonce`, and a host's hostname is its name."""
    started: dict[int, str] = {}
    finished: dict[int, str] = {}
    for event in events:
        shard = event["data"].get("shard")
        if event["type"] == "shard_started":
            started[shard] = event["data"]["owner"].split(":", 1)[0]
        elif event["type"] == "shard_succeeded":
            finished[shard] = started[shard]
    return started, finished


def _wait_for(check: Any, timeout: float, what: str) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            found = check()
        except httpx.HTTPError:
            found = None
        if found:
            return found
        time.sleep(0.1)
    raise TimeoutError(what)


def test_shards_spread_over_two_hosts_and_one_host_dies_mid_job(farm: HostFarm) -> None:
    rows = [
        {"custom_id": i, "input": f"item {i}: " + "a sentence to embed " * 12} for i in range(ITEMS)
    ]
    worker1, worker2 = farm.worker_hosts
    with farm.session() as client:
        file = upload(client, jsonl(rows))
        job_id = submit(client, {"model": "minilm", "input": {"file_id": file["id"]}})["id"]
        events = f"/v1/jobs/{job_id}/events"

        def frozen_mid_shard() -> tuple[dict[int, str], dict[int, str]] | None:
            """Once both hosts finished a shard, freeze worker2 (SIGSTOP: it writes nothing
            more); kept frozen only if it holds the lease of a shard it has not finished."""
            hosts_done = set(_runs(all_pages(client, events))[1].values())
            if not {worker1.name, worker2.name} <= hosts_done:
                return None
            worker2.signal(signal.SIGSTOP)
            time.sleep(0.5)  # a commit already sent lands first
            started, finished = _runs(all_pages(client, events))
            if any(h == worker2.name and s not in finished for s, h in started.items()):
                return started, finished
            worker2.signal(signal.SIGCONT)  # between two shards: try again
            return None

        _, finished_before = _wait_for(frozen_mid_shard, 150, "shards never ran on both hosts")
        worker2.kill()  # then it loses every process at once
        assert worker2.pids() == []
        killed_at = time.monotonic()

        job = wait_done(client, job_id, timeout=180)
        recovered = time.monotonic() - killed_at
        assert job["status"] == "succeeded", job
        assert job["counts"] == {"total": ITEMS, "succeeded": ITEMS, "failed": 0}
        assert job["error_file_id"] is None
        out = read_lines(client, job["output_file_id"])
        assert [line["custom_id"] for line in out] == list(range(ITEMS))  # each once, in order
        assert all(len(line["output"]) == 384 for line in out)

        log = all_pages(client, events)
        started, finished = _runs(log)
        shards = ITEMS // SHARD_ITEMS
        assert sorted(finished) == list(range(shards)), log
        # What worker2 finished stands; the shard it was running was run again by worker1.
        assert {s: h for s, h in finished.items() if s in finished_before} == finished_before
        assert set(finished.values()) == {worker1.name, worker2.name}
        assert sum(e["type"] == "shard_started" for e in log) > shards, log
        assert all(h == worker1.name for s, h in finished.items() if s not in finished_before)
    print(
        f"\n{shards} shards: {sum(h == worker2.name for h in finished.values())} ran on "
        f"{worker2.name} before it died, the job ended {recovered:.1f}s after"
    )


def test_no_host_reads_another_hosts_disk(farm: HostFarm) -> None:
    """Every artifact is in the bucket: the worker hosts' DATA_DIRs hold their caches only."""
    for host in farm.worker_hosts:
        data = farm.root / host.name / "data"
        assert not (data / "artifacts").exists()
        cache = data / "cache"
        stray = [p for p in data.rglob("*") if p.is_file() and cache not in p.parents]
        assert stray == [], stray
