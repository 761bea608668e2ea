"""`--max-running-jobs N`: a tenant's jobs over the cap wait `queued`, through HTTP and the CLI.

One CPU worker and shards of 200 items (the test farm's SHARD_ITEMS). No sweeper runs in these
tests unless one asks for it: a held job must start because the job before it ended.
"""

from __future__ import annotations

import json
import os
import secrets
import subprocess
import sys
import threading
from collections import Counter
from collections.abc import Iterator
from typing import Any

import httpx
import pytest

from tests.helpers import all_pages, jsonl, read_lines, submit, upload, wait_done, wait_until

pytestmark = [pytest.mark.integration, pytest.mark.usefixtures("cpu_worker")]


def modelfarm(*args: str) -> str:
    """The CLI as a user runs it; the services fixture put the farm's URLs in the environment."""
    done = subprocess.run(
        [sys.executable, "-m", "app.cli", *args],
        env=dict(os.environ),
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stderr
    return done.stdout.strip()


@pytest.fixture
def capped(api_url: str) -> Iterator[tuple[str, httpx.Client]]:
    """A tenant made by `tenants create NAME --max-running-jobs 1`, and a client with its key."""
    name = f"cap-{secrets.token_hex(5)}"
    modelfarm("tenants", "create", name, "--max-running-jobs", "1")
    key = modelfarm("keys", "create", "--tenant", name)
    headers = {"Authorization": f"Bearer {key}"}
    with httpx.Client(base_url=api_url, headers=headers, timeout=60) as client:
        yield name, client


class StatusWatch:
    """Polls a tenant's unfinished jobs through the API: the most ever `running` at once, and
    whether jobs were seen `queued` while another ran."""

    def __init__(self, client: httpx.Client) -> None:
        self.client = client
        self.most_running = 0
        self.queued_behind = 0  # the most jobs seen queued while one ran
        self.polls = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.wait(0.05):
            jobs = self.client.get("/v1/jobs", params={"limit": 100}).json()["data"]
            seen = Counter(job["status"] for job in jobs)
            running = seen["running"] + seen["cancelling"]
            self.most_running = max(self.most_running, running)
            if running:
                self.queued_behind = max(self.queued_behind, seen["queued"])
            self.polls += 1

    def __enter__(self) -> StatusWatch:
        self._thread.start()
        return self

    def __exit__(self, *_: object) -> None:
        self._stop.set()
        self._thread.join(10)


def _rows(n: int, tag: str) -> bytes:
    return jsonl([{"custom_id": f"{tag}-{i}", "input": "a b c"} for i in range(n)])


def _inline(n: int, tag: str) -> dict[str, Any]:
    items = [{"custom_id": f"{tag}-{i}", "input": f"b {i}"} for i in range(n)]
    return {"model": "minilm", "input": {"items": items}}


def _events(client: httpx.Client, job_id: str) -> list[dict[str, Any]]:
    return all_pages(client, f"/v1/jobs/{job_id}/events")


def _gauge(metrics: str, family: str, tenant: str) -> float:
    """The tenant's CPU-pool sample of a family, whatever order the labels come in."""
    for line in metrics.splitlines():
        if line.startswith(family + "{") and f'tenant="{tenant}"' in line and '"cpu"' in line:
            return float(line.split()[-1])
    raise AssertionError(f"no {family} sample for tenant {tenant}")


def _wait_running(client: httpx.Client, job_id: str) -> None:
    def running() -> bool:
        return client.get(f"/v1/jobs/{job_id}").json()["status"] == "running"

    wait_until(running, f"job {job_id} started")


def _wait_held(client: httpx.Client, job_id: str) -> None:
    def held() -> bool:
        return "held" in [e["type"] for e in _events(client, job_id)]

    wait_until(held, f"job {job_id} held by the planner")


def _all_once(client: httpx.Client, job: dict[str, Any], ids: list[str]) -> None:
    assert job["status"] == "succeeded", job
    assert [line["custom_id"] for line in read_lines(client, job["output_file_id"])] == ids


def test_a_capped_tenant_runs_one_job_at_a_time_and_others_are_not_held(
    capped: tuple[str, httpx.Client], other_client: httpx.Client
) -> None:
    _, client = capped
    # The first job (15 shards) must still run when the high-priority job comes, five
    # submissions later: were it to end before, the normal jobs could all start first.
    first = upload(client, _rows(3000, "first"))
    big = upload(client, _rows(800, "big"))
    free_file = upload(other_client, _rows(600, "free"))
    with StatusWatch(client) as watch, StatusWatch(other_client) as free_watch:
        body = {"model": "minilm", "input": {"file_id": first["id"]}}
        jobs = [(submit(client, body), "first", 3000)]
        jobs += [(submit(client, _inline(5, f"s{i}")), f"s{i}", 5) for i in range(3)]
        jobs.append(
            (submit(client, {"model": "minilm", "input": {"file_id": big["id"]}}), "big", 800)
        )
        urgent = submit(client, {**_inline(3, "u"), "priority": "high"})
        # The uncapped tenant's two jobs of three shards each run side by side meanwhile.
        free = [
            submit(other_client, {"model": "minilm", "input": {"file_id": free_file["id"]}})
            for _ in range(2)
        ]
        for job in free:
            _all_once(
                other_client,
                wait_done(other_client, job["id"], 180),
                [f"free-{i}" for i in range(600)],
            )
        done = {job["id"]: wait_done(client, job["id"], 240) for job, _, _ in jobs}
        urgent_done = wait_done(client, urgent["id"], 240)
    assert watch.polls > 10 and free_watch.polls > 10
    assert watch.most_running == 1, f"{watch.most_running} jobs of a tenant capped at 1 ran"
    assert watch.queued_behind >= 2, "no job was ever seen waiting behind a running one"
    assert free_watch.most_running >= 2, "the uncapped tenant was held to one job too"

    for job, tag, n in jobs:
        _all_once(client, done[job["id"]], [f"{tag}-{i}" for i in range(n)])
    _all_once(client, urgent_done, ["u-0", "u-1", "u-2"])
    held = [
        job for job, _, _ in jobs[1:] if "held" in [e["type"] for e in _events(client, job["id"])]
    ]
    assert held, "no job says it was held"
    for job in held:
        events = _events(client, job["id"])
        types = [e["type"] for e in events]
        hold = next(e for e in events if e["type"] == "held")
        assert hold["data"]["reason"] == "max_running_jobs" and hold["data"]["limit"] == 1
        # Sent again once a slot was free, then started: held, dispatched (after held), running.
        resent = [e for e in events if e["type"] == "dispatched" and e["data"].get("after")]
        assert resent and types.index("running") > types.index("held")
        assert done[job["id"]]["notice"] is None  # the waiting notice goes when it starts
    # The high-priority job, submitted last, started before the normal jobs still held then.
    started = {j["id"]: done[j["id"]]["started_at"] for j, _, _ in jobs}
    assert urgent_done["started_at"] < max(started.values())


def test_a_held_job_says_why_and_tenants_set_takes_effect(
    capped: tuple[str, httpx.Client], api_url: str
) -> None:
    name, client = capped
    # 100 shards: it must still run after two CLI calls (a second or more each) and the held
    # jobs' runs; it is cancelled once that is shown.
    first_file = upload(client, _rows(20_000, "first"))
    first = submit(client, {"model": "minilm", "input": {"file_id": first_file["id"]}})
    _wait_running(client, first["id"])
    waiting = [submit(client, _inline(4, f"w{i}")) for i in range(2)]

    def noticed() -> list[dict[str, Any]] | None:
        views = [client.get(f"/v1/jobs/{job['id']}").json() for job in waiting]
        return views if all(v["notice"] for v in views) else None

    views = wait_until(noticed, "both waiting jobs carry a notice")
    assert all(v["status"] == "queued" for v in views)
    assert "max_running_jobs" in views[0]["notice"]
    metrics = httpx.get(f"{api_url}/metrics").text
    assert _gauge(metrics, "modelfarm_jobs_held", name) == 2
    assert _gauge(metrics, "modelfarm_jobs_waiting", name) >= 2  # and the first one's shards
    listed = json.loads(modelfarm("tenants", "list", "--json"))["data"]
    row = next(t for t in listed if t["name"] == name)
    assert row["max_running_jobs"] == 1 and row["running_jobs"] == 1 and row["queued_jobs"] == 2

    modelfarm("tenants", "set", name, "--max-running-jobs", "3")
    # Without a sweeper: `tenants set` itself sends what may start now, and they run (a few
    # milliseconds each, too short to poll) while the first job still does.
    for job in waiting:
        view = wait_done(client, job["id"], 60)
        assert view["status"] == "succeeded"
        assert view["started_at"] is not None
    still = client.get(f"/v1/jobs/{first['id']}").json()
    assert still["status"] == "running", "the first job ended before: nothing was shown"
    client.post(f"/v1/jobs/{first['id']}/cancel")
    assert wait_done(client, first["id"], 120)["status"] == "cancelled"


def test_the_sweeper_sends_a_held_job_whose_releaser_died(
    capped: tuple[str, httpx.Client],
) -> None:
    """A held job whose slot came free without a release (the releaser died after the end
    committed) starts at the next sweep; while the cap is reached it stays held, unsent."""
    from sqlalchemy import update

    from app.models import Job
    from app.sweeper import GRACE, sweep_once
    from app.unit_of_work import session_scope

    _, client = capped
    gpu_job = {"model": "minilm", "device": "gpu", "input": {"items": [{"input": "x"}]}}
    blocker = submit(client, gpu_job)  # no GPU worker here: it never runs by itself
    with session_scope() as session:  # it counts as running: the tenant's one slot is taken
        session.execute(update(Job).where(Job.id == blocker["id"]).values(status="running"))
    job = submit(client, _inline(3, "late"))
    _wait_held(client, job["id"])
    with session_scope() as session:  # past the sweeper's grace for fresh jobs: it looks at it
        older = {"created_at": Job.created_at - 10 * GRACE}
        older["dispatched_at"] = Job.dispatched_at - 10 * GRACE
        session.execute(update(Job).where(Job.id == job["id"]).values(**older))
    sweep_once()  # what it sends, it records first (a `redispatched` event)
    view = client.get(f"/v1/jobs/{job['id']}").json()
    assert view["status"] == "queued" and "max_running_jobs" in view["notice"]
    types = [e["type"] for e in _events(client, job["id"])]
    assert types.count("dispatched") == 1 and "redispatched" not in types  # not sent again

    with session_scope() as session:  # it ends, and nobody releases the held job
        session.execute(update(Job).where(Job.id == blocker["id"]).values(status="cancelled"))
    # A sweep releases it: this one, or the session's own sweeper where an earlier module
    # started it (whichever comes first; nothing else releases a held job here).
    sweep_once()
    view = wait_done(client, job["id"], 60)
    assert view["status"] == "succeeded" and view["counts"]["succeeded"] == 3
    released = [e for e in _events(client, job["id"]) if e["type"] == "dispatched"]
    assert [e["data"].get("after") for e in released] == [None, "held"]


def test_a_training_job_waits_for_the_cap_too(capped: tuple[str, httpx.Client]) -> None:
    _, client = capped
    # The training file first, so that nothing slow comes between the first job's start and
    # the training job's submission: the first job must still run when the training is planned.
    rows = [{"input": [float(i), float(i % 3)], "label": "ab"[i % 2]} for i in range(40)]
    training_file = upload(client, jsonl(rows), purpose="training")
    big = upload(client, _rows(3000, "big"))
    first = submit(client, {"model": "minilm", "input": {"file_id": big["id"]}})
    _wait_running(client, first["id"])
    training = submit(
        client,
        {
            "type": "training",
            "framework": "sklearn",
            "input": {"file_id": training_file["id"]},
            "params": {"estimator": "logistic_regression"},
            "output_model": f"capped-{secrets.token_hex(3)}",
        },
    )
    _wait_held(client, training["id"])
    assert client.get(f"/v1/jobs/{training['id']}").json()["status"] == "queued"
    trained = wait_done(client, training["id"], 240)
    assert trained["status"] == "succeeded", trained
    ran = wait_done(client, first["id"], 240)
    assert ran["status"] == "succeeded" and trained["started_at"] >= ran["finished_at"]


def test_cancelling_the_running_job_starts_the_held_one(capped: tuple[str, httpx.Client]) -> None:
    _, client = capped
    # 100 shards, so it still runs when it is cancelled (it is never run to its end).
    big = upload(client, _rows(20_000, "big"))
    first = submit(client, {"model": "minilm", "input": {"file_id": big["id"]}})
    held = submit(client, _inline(2, "next"))
    also_held = submit(client, _inline(2, "later"))
    _wait_held(client, also_held["id"])
    # A held job cancelled: it ends at once (in the API), and frees nothing.
    assert client.post(f"/v1/jobs/{also_held['id']}/cancel").json()["status"] == "cancelled"
    assert client.get(f"/v1/jobs/{held['id']}").json()["status"] == "queued"
    client.post(f"/v1/jobs/{first['id']}/cancel")
    assert wait_done(client, first["id"], 120)["status"] == "cancelled"
    _all_once(client, wait_done(client, held["id"], 60), ["next-0", "next-1"])
