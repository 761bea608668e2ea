"""Jobs accepted per second by `modelfarm api` alone, against a bare INSERT+COMMIT+LPUSH loop.

    .venv/bin/python bench/submit.py [--clients 8] [--seconds 10]

Starts PostgreSQL and Redis (or uses MODELFARM_TEST_DATABASE_URL / MODELFARM_TEST_REDIS_URL),
migrates, and runs `modelfarm api` with no worker: every job stays queued, so what is timed is
submission only. `--clients` threads each POST one-item inline jobs over one keep-alive
connection for `--seconds`; every answer must be a 202. The baseline, in the same run and on the
same servers, is the least a submission can cost: the same threads each doing one INSERT and
COMMIT of a job-sized row in PostgreSQL and one LPUSH of a message-sized string to Redis per job.
"""

from __future__ import annotations

import argparse
import http.client
import json
import sys
import threading
import time
import uuid
from collections.abc import Callable
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

BODY = json.dumps(
    {"model": "minilm", "input": {"items": [{"custom_id": "a", "input": "hello"}]}}
).encode()


def hammer(clients: int, seconds: float, make_one: Callable[[], Callable[[], None]]) -> float:
    """`clients` threads calling their own `make_one()` function until time is up; per second."""
    counts = [0] * clients
    errors: list[BaseException] = []
    start_line = threading.Barrier(clients + 1)
    stop_at = [0.0]

    def loop(slot: int) -> None:
        try:
            one = make_one()
            start_line.wait()
            while time.monotonic() < stop_at[0]:
                one()
                counts[slot] += 1
        except BaseException as exc:  # reported below; a failed answer fails the benchmark
            errors.append(exc)

    threads = [threading.Thread(target=loop, args=(i,)) for i in range(clients)]
    for t in threads:
        t.start()
    stop_at[0] = time.monotonic() + seconds + 1e6  # set for real once every client is ready
    start_line.wait()
    begin = time.monotonic()
    stop_at[0] = begin + seconds
    for t in threads:
        t.join()
    if errors:
        raise errors[0]
    return sum(counts) / (time.monotonic() - begin)


def farm_client(port: int, api_key: str) -> Callable[[], Callable[[], None]]:
    def make_one() -> Callable[[], None]:
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
        headers = {"Authorization": f"Bearer {api_key}", "Content-Type": "application/json"}

        def one() -> None:
            conn.request("POST", "/v1/jobs", body=BODY, headers=headers)
            answer = conn.getresponse()
            payload = answer.read()
            if answer.status != 202:
                raise RuntimeError(f"POST /v1/jobs answered {answer.status}: {payload[:300]!r}")

        return one

    return make_one


def bare_client(db_url: str, redis_url: str) -> Callable[[], Callable[[], None]]:
    import psycopg
    import redis

    message = json.dumps({"task": "modelfarm.plan_job", "args": ["x" * 26], "pad": "y" * 900})

    def make_one() -> Callable[[], None]:
        conn = psycopg.connect(db_url)
        broker = redis.Redis.from_url(redis_url)

        def one() -> None:
            conn.execute(
                "INSERT INTO bench_submit (id, tenant_id, status, model, params, created_at)"
                " VALUES (%s, %s, 'queued', 'minilm', '{}'::jsonb, now())",
                (uuid.uuid4().hex, "tenant"),
            )
            conn.commit()
            broker.lpush("bench_submit", message)

        return one

    return make_one


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--clients", type=int, default=8)
    parser.add_argument("--seconds", type=float, default=10.0)
    args = parser.parse_args()

    from app.local.procs import Supervisor, modelfarm_command
    from bench.farm import farm_services

    with farm_services() as services:
        # psycopg itself takes the plain URL, not SQLAlchemy's `postgresql+psycopg://` form.
        db_url = services.db_url.replace("postgresql+psycopg://", "postgresql://", 1)
        redis_url = services.redis_url
        port, key = services.port, services.api_key
        supervisor = Supervisor()
        supervisor.start("api", modelfarm_command("api"), log_file=services.tmp / "api.log")
        try:
            wait_for_api(port, key)
            hammer(args.clients, 2.0, farm_client(port, key))  # warm connections and caches
            farm = hammer(args.clients, args.seconds, farm_client(port, key))
        finally:
            supervisor.stop_all()

        import psycopg

        with psycopg.connect(db_url, autocommit=True) as conn:
            conn.execute(
                "CREATE TABLE IF NOT EXISTS bench_submit (id text PRIMARY KEY, tenant_id text,"
                " status text, model text, params jsonb, created_at timestamptz)"
            )
        try:
            hammer(args.clients, 2.0, bare_client(db_url, redis_url))
            bare = hammer(args.clients, args.seconds, bare_client(db_url, redis_url))
        finally:
            import redis

            redis.Redis.from_url(redis_url).delete("bench_submit")
            with psycopg.connect(db_url, autocommit=True) as conn:
                conn.execute("DROP TABLE bench_submit")

    print(f"submissions, {args.clients} concurrent clients, {args.seconds:g} s each")
    print(f"farm API (POST /v1/jobs, one-item inline) {farm:8.1f} jobs/s")
    print(f"bare INSERT+COMMIT+LPUSH loop             {bare:8.1f} jobs/s")
    print(f"ratio farm / bare                         {farm / bare:8.2f}x")


def wait_for_api(port: int, api_key: str, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while True:
        try:
            farm_client(port, api_key)()()
            return
        except (OSError, http.client.HTTPException):
            if time.monotonic() > deadline:
                raise
            time.sleep(0.3)


if __name__ == "__main__":
    main()
