"""Scale-out: the same job on one worker host, then on two, and what each shard costs PostgreSQL.

    sudo .venv/bin/python bench/scale.py [--items 3000] [--shard-items 100]

The farm of tests/hostfarm.py: PostgreSQL, Redis and moto's S3 on one network namespace, the API
and the sweeper on another, CPU workers on their own (one process each, pinned to one core
with taskset: core 0, then core 1), artifacts in the bucket. The job runs once with worker1
alone, then again (the same sentences, uploaded again) with worker2 started beside it; prints
items/s for each and the ratio. Meanwhile the database's own counters (pg_stat_database:
commits, rollbacks, time spent in statements) are read before and after the two-host job, less
what the idle farm (heartbeats, sweeps) does in as long, and divided by the job's shards.
Needs root (network namespaces); says so and exits 0 where it cannot make them.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

IDLE_SECONDS = 20.0
# A backend reports its counters when it goes idle, at most once a second and at the latest
# 10 s later (PGSTAT_IDLE_INTERVAL): wait that long before reading them.
STATS_FLUSH_SECONDS = 11.0


def _counters(db_url: str) -> dict[str, float]:
    import psycopg

    with psycopg.connect(db_url, autocommit=True) as conn:
        row = conn.execute(
            "SELECT xact_commit, xact_rollback, active_time, tup_inserted, tup_updated"
            " FROM pg_stat_database WHERE datname = current_database()"
        ).fetchone()
    assert row is not None
    names = ("commits", "rollbacks", "active_ms", "inserted", "updated")
    return dict(zip(names, (float(v) for v in row), strict=True))


def _delta(after: dict[str, float], before: dict[str, float]) -> dict[str, float]:
    return {k: after[k] - before[k] for k in after}


def _run(client: Any, content: bytes, items: int) -> tuple[float, dict[str, Any]]:
    """Items per second from the job's submission to its end (the upload is not timed)."""
    from tests.helpers import submit, upload, wait_done

    file = upload(client, content)
    start = time.perf_counter()
    job = submit(client, {"model": "minilm", "input": {"file_id": file["id"]}})
    done = wait_done(client, job["id"], timeout=1800)
    elapsed = time.perf_counter() - start
    assert done["status"] == "succeeded", done
    assert done["counts"]["succeeded"] == items, done
    return items / elapsed, done


def _cpu(hosts: list[Any]) -> dict[str, float]:
    return {f"{h.name}/{name}": sec for h in hosts for name, sec in h.cpu_seconds().items()}


def _measured(
    client: Any, hosts: list[Any], content: bytes, items: int
) -> tuple[float, dict[str, Any], dict[str, float]]:
    """_run, and the CPU seconds each host's programs used meanwhile."""
    start = _cpu(hosts)
    rate, job = _run(client, content, items)
    return rate, job, {k: v - start.get(k, 0.0) for k, v in _cpu(hosts).items()}


def _report(label: str, rate: float, cpu: dict[str, float], items: int) -> None:
    """Items/s, and items per CPU-second the worker hosts got: on a shared machine the first
    moves with the neighbours' load, the second says whether more hosts cost the farm more."""
    workers = sum(v for k, v in cpu.items() if k.startswith("worker"))
    seconds = items / rate
    hosts: dict[str, float] = {}
    for key, value in cpu.items():
        hosts[key.split("/", 1)[0]] = hosts.get(key.split("/", 1)[0], 0.0) + value
    shares = ", ".join(f"{h} {v / seconds:.0%}" for h, v in hosts.items())
    print(
        f"{label}: {rate:8.1f} items/s, {items / workers:6.1f} items per worker CPU-second "
        f"(cores used: {shares})"
    )


def _shards_by_host(client: Any, job_id: str) -> dict[str, int]:
    from tests.helpers import all_pages

    runs: dict[int, str] = {}
    for event in all_pages(client, f"/v1/jobs/{job_id}/events"):
        if event["type"] == "shard_started":
            runs[event["data"]["shard"]] = event["data"]["owner"].split(":", 1)[0]
    hosts: dict[str, int] = {}
    for host in runs.values():
        hosts[host] = hosts.get(host, 0) + 1
    return hosts


def _start_warm(farm: Any, client: Any, host: Any, core: str, rows: list[Any]) -> None:
    """A worker on `host` pinned to `core`, its model loaded and a small job run."""
    from tests.helpers import jsonl

    farm.start_worker(host, cpus=core)
    farm.workers[host.name].wait_for_log("worker process ready", timeout=300)
    _run(client, jsonl(rows[:200]), 200)


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--items", type=int, default=3000)
    parser.add_argument("--shard-items", type=int, default=100)
    args = parser.parse_args()

    from bench.embeddings import make_sentences
    from tests.helpers import jsonl
    from tests.hostfarm import host_farm
    from tests.hosts import why_no_namespaces

    reason = why_no_namespaces()
    if reason:
        print(f"skipped: {reason}")
        return 0
    rows = [{"custom_id": i, "input": s} for i, s in enumerate(make_sentences(args.items))]
    content = jsonl(rows)
    shards = -(-args.items // args.shard_items)
    overrides = {
        "MODELFARM_SHARD_ITEMS": str(args.shard_items),
        "MODELFARM_WORKER_CONCURRENCY": "1",  # one process per host, one core each
    }
    with (
        tempfile.TemporaryDirectory(prefix="mf-scale-") as tmp,
        host_farm(Path(tmp), 2, overrides, start_workers=False) as farm,
        farm.session() as client,
    ):
        db_url = farm.env["MODELFARM_DATABASE_URL"]
        worker1, worker2 = farm.worker_hosts
        hosts = [farm.services, farm.api, worker1, worker2]
        _start_warm(farm, client, worker1, "0", rows)
        one, _, cpu_one = _measured(client, hosts, content, args.items)
        _start_warm(farm, client, worker2, "1", rows)
        time.sleep(STATS_FLUSH_SECONDS)
        idle_start, t0 = _counters(db_url), time.monotonic()
        time.sleep(IDLE_SECONDS)
        idle = _delta(_counters(db_url), idle_start)
        idle_rate = {k: v / (time.monotonic() - t0) for k, v in idle.items()}
        before, t1 = _counters(db_url), time.monotonic()
        two, done, cpu_two = _measured(client, hosts, content, args.items)
        spread = _shards_by_host(client, done["id"])
        output = client.get(f"/v1/files/{done['output_file_id']}").json()["bytes"]
        time.sleep(STATS_FLUSH_SECONDS)
        window = time.monotonic() - t1
        spent = _delta(_counters(db_url), before)
    job = {k: v - idle_rate[k] * window for k, v in spent.items()}
    print(f"job: {args.items} sentences (all-MiniLM-L6-v2), {shards} shards of {args.shard_items}")
    _report("1 worker host  (core 0)    ", one, cpu_one, args.items)
    _report("2 worker hosts (cores 0, 1)", two, cpu_two, args.items)
    print(f"  shards run (by their last start): {spread}")
    print(f"  output file: {output / args.items:.0f} bytes an item, {output / shards:.0f} a shard")
    print(f"ratio 2 hosts / 1 host: {two / one:.2f}")
    per_shard = {k: 1000 * v / shards for k, v in cpu_two.items() if k.startswith("services/")}
    print(
        f"per shard, 2-host job: {(job['commits'] + job['rollbacks']) / shards:.1f} transactions, "
        f"{job['active_ms'] / shards:.2f} ms in statements, "
        f"{job['inserted'] / shards:.1f} rows inserted, {job['updated'] / shards:.1f} updated; "
        "CPU ms: " + ", ".join(f"{k.split('/', 1)[1]} {v:.1f}" for k, v in per_shard.items())
    )
    print(
        f"idle farm (2 worker hosts, API, sweeper): {idle_rate['commits']:.2f} commits/s, "
        f"{idle_rate['active_ms']:.2f} ms/s in statements"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
