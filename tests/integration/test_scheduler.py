"""Sharing the farm: fair share between tenants, priority within one, a bounded window.

One CPU worker (one process) and shards of 200 items (the test farm's SHARD_ITEMS): tenant A's
backlog is tens of shards, each a fraction of a second of "a b c" sentences.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from datetime import datetime
from typing import Any

import httpx
import pytest

from tests.helpers import all_pages, assert_error, jsonl, read_lines, submit, upload, wait_done

pytestmark = [pytest.mark.integration, pytest.mark.usefixtures("cpu_worker")]


def _rows(n: int, tag: str) -> bytes:
    return jsonl([{"custom_id": f"{tag}-{i}", "input": "a b c"} for i in range(n)])


def _events(client: httpx.Client, job_id: str) -> list[dict[str, Any]]:
    return all_pages(client, f"/v1/jobs/{job_id}/events")


def _when(event: dict[str, Any]) -> datetime:
    return datetime.fromisoformat(event["created_at"])


def _wait_started(client: httpx.Client, job_id: str, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if any(e["type"] == "shard_started" for e in _events(client, job_id)):
            return
        time.sleep(0.1)
    raise TimeoutError(f"job {job_id} started no shard in {timeout}s")


class WindowWatch:
    """Polls PostgreSQL while a test runs: the most shards ever released and unfinished in the
    CPU pool, beside the window the scheduler computed at that moment."""

    def __init__(self) -> None:
        self.worst: list[tuple[int, int]] = []  # (in flight, window) whenever over
        self.most = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        from app.config import get_settings
        from app.services import scheduler
        from app.unit_of_work import session_scope

        settings = get_settings()
        while not self._stop.wait(0.05):
            with session_scope() as session:  # one snapshot: a release shows whole or not
                flying = scheduler.count_in_flight(session, "cpu")
                window = scheduler.window_size(
                    session, "cpu", settings.scheduler_window, settings.processes_per_worker("cpu")
                )
            self.most = max(self.most, flying)
            if flying > window:
                self.worst.append((flying, window))

    def __enter__(self) -> WindowWatch:
        self._thread.start()
        return self

    def __exit__(self, *_: object) -> None:
        self._stop.set()
        self._thread.join(10)


@pytest.fixture
def window_watch() -> Iterator[WindowWatch]:
    with WindowWatch() as watch:
        yield watch


def test_a_small_job_of_another_tenant_does_not_wait_for_a_big_backlog(
    client: httpx.Client, other_client: httpx.Client, api_url: str, window_watch: WindowWatch
) -> None:
    file = upload(client, _rows(3000, "a"))
    big = [submit(client, {"model": "minilm", "input": {"file_id": file["id"]}}) for _ in range(3)]
    _wait_started(client, big[0]["id"])
    metrics = httpx.get(f"{api_url}/metrics").text
    assert 'modelfarm_shards_in_flight{queue="cpu"}' in metrics
    assert "modelfarm_jobs_waiting{" in metrics

    started = time.monotonic()
    small = submit(
        other_client,
        {"model": "minilm", "input": {"items": [{"input": f"b {i}"} for i in range(10)]}},
    )
    small = wait_done(other_client, small["id"], timeout=60)
    took = time.monotonic() - started
    assert small["status"] == "succeeded" and small["counts"]["succeeded"] == 10
    assert took < 20, f"the 10-item job took {took:.1f}s behind tenant A's backlog"
    last = client.get(f"/v1/jobs/{big[-1]['id']}").json()
    assert last["status"] == "running", "tenant A's work was done before B's job: nothing shared"

    for job in big:
        done = wait_done(client, job["id"], timeout=180)
        assert done["status"] == "succeeded", done
        ids = [line["custom_id"] for line in read_lines(client, done["output_file_id"])]
        assert ids == [f"a-{i}" for i in range(3000)]  # every item once, in input order
        types = [e["type"] for e in _events(client, job["id"])]
        # 15 shards, each released once, and once more for each that gave its slot to B's
        # first shard while unstarted (decision 0015: a tenant two ahead gives way).
        assert types.count("shard_dispatched") == 15 + types.count("shard_recalled")
    assert window_watch.most >= 1
    assert window_watch.worst == [], f"window exceeded: {window_watch.worst[:5]}"


def test_high_priority_goes_before_the_tenants_normal_backlog(
    client: httpx.Client, window_watch: WindowWatch
) -> None:
    # 30 shards: the backlog must outlast the urgent job's upload, plan and two shards, and
    # 15 short shards (two seconds or so on two idle cores) left little to spare.
    backlog_file = upload(client, _rows(6000, "n"))
    backlog = submit(client, {"model": "minilm", "input": {"file_id": backlog_file["id"]}})
    _wait_started(client, backlog["id"])
    urgent_file = upload(client, _rows(400, "h"))
    urgent = submit(
        client,
        {"model": "minilm", "input": {"file_id": urgent_file["id"]}, "priority": "high"},
    )
    assert urgent["priority"] == "high"
    urgent_done = wait_done(client, urgent["id"], timeout=60)
    assert urgent_done["status"] == "succeeded"
    urgent_events = _events(client, urgent["id"])
    assert urgent_events[0]["type"] == "queued" and urgent_events[0]["data"]["priority"] == "high"
    submitted = _when(urgent_events[0])
    first_urgent = min(_when(e) for e in urgent_events if e["type"] == "shard_started")

    done = wait_done(client, backlog["id"], timeout=120)
    assert done["status"] == "succeeded"
    starts = [e for e in _events(client, backlog["id"]) if e["type"] == "shard_started"]
    assert len(starts) == 30
    # The backlog's shards that started between the submission and the urgent job's first
    # shard. Its plan message goes before the normal messages in the broker, and its first
    # shard takes the place of the backlog's released, unstarted one (the window is full):
    # at most the one the worker was already taking when the plan message came.
    between = [e for e in starts if submitted <= _when(e) < first_urgent]
    assert len(between) <= 1, f"{len(between)} normal shards went first"
    recalled = [e for e in _events(client, backlog["id"]) if e["type"] == "shard_recalled"]
    assert recalled and recalled[0]["data"]["for"]["job"] == urgent["id"], recalled
    later = [e for e in starts if _when(e) > _when(urgent_events[-1])]
    assert later, "the backlog finished before the urgent job: nothing was left to overtake"
    assert window_watch.worst == []


def test_priority_is_part_of_the_job(client: httpx.Client) -> None:
    items = {"items": [{"input": "a b c"}]}
    low = submit(client, {"model": "minilm", "input": items, "priority": "low"})
    assert low["priority"] == "low"
    normal = submit(client, {"model": "minilm", "input": items})
    assert normal["priority"] == "normal"
    assert client.get(f"/v1/jobs/{low['id']}").json()["priority"] == "low"
    bad = client.post("/v1/jobs", json={"model": "minilm", "input": items, "priority": "urgent"})
    assert_error(bad, 422)
    assert wait_done(client, low["id"])["status"] == "succeeded"
