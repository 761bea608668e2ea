"""Sharing the farm: a small job of one tenant behind another's backlog, and priority.

    .venv/bin/python bench/fairness.py [--backlog-items 3000] [--backlog-jobs 3]

Starts a throwaway farm (see bench/farm.py) with shards of 200 items, as in issue 12's
figures, and one CPU worker. Then:

1. fair share: tenant B's 10-item job, timed from its POST to the answer that shows it
   `succeeded`, on the idle farm and then while tenant A's `--backlog-jobs` jobs of
   `--backlog-items` items keep the worker busy (median of a few each); the ratio is what A's
   backlog costs B. Before the scheduler B waited for all of A's work (37 s for three
   3,000-item jobs).
2. priority: behind A's own backlog of normal work, A's `high` job of two shards, timed from
   its POST to its first shard's start (five times, each sent at a random point of a backlog
   shard: the median and the longest), beside one shard's time (the backlog's median, from
   its events): issue 12's target is one shard's time. The shard running when the job arrives
   is never interrupted, so the longest wait is about one shard plus the job's planning, and
   the median about half a shard plus the planning.

A's jobs are cancelled once measured, so the run takes about two minutes on a 2-core machine.
"""

from __future__ import annotations

import argparse
import random
import statistics
import sys
import time
from datetime import datetime
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

SHARD_ITEMS = 200


def _rows(n: int, tag: str) -> bytes:
    lines = [
        f'{{"custom_id": "{tag}-{i}", "input": "sentence {i} of a large backlog to embed"}}\n'
        for i in range(n)
    ]
    return "".join(lines).encode()


def _when(event: dict[str, Any]) -> datetime:
    return datetime.fromisoformat(event["created_at"])


def _small_job_seconds(client: Any, n: int = 10) -> float:
    items = [{"custom_id": f"b-{i}", "input": f"a short request {i}"} for i in range(n)]
    start = time.perf_counter()
    job = client.create_job({"model": "minilm", "input": {"items": items}})
    done = client.wait(job["id"], timeout=300, poll=10)
    took = time.perf_counter() - start
    assert done["status"] == "succeeded" and done["counts"]["succeeded"] == n, done
    return took


def _wait_started(client: Any, job_id: str, timeout: float = 120) -> None:
    deadline = time.monotonic() + timeout
    while not any(e["type"] == "shard_started" for e in client.iter_events(job_id)):
        if time.monotonic() > deadline:
            raise TimeoutError(f"job {job_id} started no shard in {timeout}s")
        time.sleep(0.1)


def _shard_seconds(client: Any, job_id: str) -> list[float]:
    """How long each finished shard of a job took, from its events."""
    started: dict[int, datetime] = {}
    took = []
    for event in client.iter_events(job_id):
        shard = event["data"].get("shard")
        if event["type"] == "shard_started":
            started[shard] = _when(event)
        elif event["type"] == "shard_succeeded" and shard in started:
            took.append((_when(event) - started[shard]).total_seconds())
    return took


def _high_job_wait(client: Any, file_id: str) -> float:
    """Seconds from a `high` job's submission to its first shard's start (its events' times)."""
    job = client.create_job({"model": "minilm", "input": {"file_id": file_id}, "priority": "high"})
    _wait_started(client, job["id"])
    events = list(client.iter_events(job["id"]))
    first = min(_when(e) for e in events if e["type"] == "shard_started")
    client.wait(job["id"], timeout=300, poll=10)
    return (first - _when(events[0])).total_seconds()


def _cancel(client: Any, jobs: list[dict[str, Any]]) -> None:
    for job in jobs:
        client.cancel_job(job["id"])
    for job in jobs:
        client.wait(job["id"], timeout=300, poll=10)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--backlog-items", type=int, default=3000)
    parser.add_argument("--backlog-jobs", type=int, default=3)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()

    from app.config import get_settings
    from app.services import scheduler
    from app.services.tenants import create_api_key, get_or_create_tenant
    from app.unit_of_work import session_scope
    from bench.farm import running_farm
    from modelfarm_client import Client

    with running_farm({"MODELFARM_SHARD_ITEMS": str(SHARD_ITEMS)}) as farm:
        a = farm.client
        with session_scope() as session:
            b_key = create_api_key(session, get_or_create_tenant(session, "bench-b"))
        with Client(farm.url, b_key) as b:
            _small_job_seconds(b)  # warm B's connection
            idle = [_small_job_seconds(b) for _ in range(args.repeats)]

            backlog_file = a.upload(_rows(args.backlog_items, "a"))
            body = {"model": "minilm", "input": {"file_id": backlog_file["id"]}}
            backlog = [a.create_job(body) for _ in range(args.backlog_jobs)]
            _wait_started(a, backlog[0]["id"])
            busy = [_small_job_seconds(b) for _ in range(args.repeats)]
            still = sum(a.job(j["id"])["status"] == "running" for j in backlog)
            urgent_file = a.upload(_rows(2 * SHARD_ITEMS, "h"))
            # Each high job waits for its first shard until the shard running when it came
            # ends: so each is sent at a random point of a shard (after the previous high job
            # ended, a shard of the backlog has just begun), or every wait would be the worst.
            so_far = _shard_seconds(a, backlog[0]["id"])
            shard_guess = statistics.median(so_far) if so_far else 0.3
            phases = random.Random(12)
            waits = []
            for _ in range(5):
                time.sleep(phases.uniform(0, shard_guess))
                waits.append(_high_job_wait(a, urgent_file["id"]))
            shards = [s for job in backlog for s in _shard_seconds(a, job["id"])]
            with session_scope() as session:
                settings = get_settings()
                window = scheduler.window_size(
                    session, "cpu", settings.scheduler_window, settings.processes_per_worker("cpu")
                )
            _cancel(a, backlog)

    idle_s, busy_s = statistics.median(idle), statistics.median(busy)
    shard_s = statistics.median(shards) if shards else float("nan")
    total = args.backlog_jobs * args.backlog_items
    print(f"tenant A's backlog: {args.backlog_jobs} jobs of {args.backlog_items} items")
    print(f"  ({total} items, shards of {SHARD_ITEMS}); one CPU worker")
    print(f"tenant B's 10-item job, idle farm: median {idle_s:.2f} s of {args.repeats}")
    print(f"tenant B's 10-item job, behind A:  median {busy_s:.2f} s of {args.repeats}")
    print(f"  A's jobs still running after B's: {still} of {args.backlog_jobs}")
    print(f"ratio behind A / idle: {busy_s / idle_s:.2f}")
    print(f"one shard of A's backlog ({SHARD_ITEMS} items): median {shard_s:.2f} s")
    print(f"  the CPU pool's window: {window} shard messages")
    urgent_wait = statistics.median(waits)
    print(
        f"high job's wait for its first shard: median {urgent_wait:.2f} s of {len(waits)}"
        f" (longest {max(waits):.2f} s)"
    )
    print(f"high job's wait / one shard: {urgent_wait / shard_s:.2f}")
    print(f"  longest wait / one shard: {max(waits) / shard_s:.2f}")


if __name__ == "__main__":
    main()
