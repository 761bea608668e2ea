"""/metrics and /readyz of a real API, read after real jobs: the farm's figures move."""

from __future__ import annotations

import re
import time

import httpx
import pytest

from tests.helpers import FarmProcess, api_process, submit, wait_done

pytestmark = pytest.mark.integration


def _scrape(api_url: str) -> str:
    answer = httpx.get(f"{api_url}/metrics", timeout=30)
    assert answer.status_code == 200
    return answer.text


def _value(text: str, name: str, **labels: str) -> float:
    """The sum of the samples of `name` whose labels include `labels`."""
    total = 0.0
    for sample_labels, value in re.findall(rf"^{name}(?:\{{([^}}]*)\}})? (\S+)$", text, re.M):
        found = dict(re.findall(r'(\w+)="([^"]*)"', sample_labels))
        if all(found.get(k) == v for k, v in labels.items()):
            total += float(value)
    return total


def _eventually(check, timeout: float = 30) -> None:  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + timeout
    while not check():
        assert time.monotonic() < deadline, "the metric did not move"
        time.sleep(0.3)


def test_queue_depth_counts_a_job_no_worker_takes(api_url: str, client: httpx.Client) -> None:
    # The test session starts no GPU worker for this module: a `gpu` job waits in its queue.
    before = _value(_scrape(api_url), "modelfarm_queue_depth", queue="gpu")
    job = submit(
        client,
        {
            "model": "minilm",
            "device": "gpu",
            "input": {"items": [{"custom_id": "a", "input": "waits"}]},
        },
    )
    _eventually(lambda: _value(_scrape(api_url), "modelfarm_queue_depth", queue="gpu") > before)
    text = _scrape(api_url)
    assert _value(text, "modelfarm_jobs", status="queued") >= 1
    assert _value(text, "modelfarm_workers", pool="gpu") == 0
    ready = httpx.get(f"{api_url}/readyz").json()
    assert ready["status"] == "ready" and "gpu" in ready["pools_without_workers"]
    assert ready["pools_absent"] == []  # MODELFARM_POOLS unset: every pool is expected
    client.post(f"/v1/jobs/{job['id']}/cancel")


def test_a_finished_job_moves_workers_items_and_durations(
    api_url: str, client: httpx.Client, cpu_worker: FarmProcess
) -> None:
    _eventually(lambda: _value(_scrape(api_url), "modelfarm_workers", pool="cpu") >= 1)
    assert httpx.get(f"{api_url}/readyz").json()["workers"]["cpu"] >= 1
    before = _scrape(api_url)
    items = [{"custom_id": str(i), "input": f"sentence {i}"} for i in range(5)]
    items.append({"custom_id": "bad", "input": 12})  # not text: an error line
    job = wait_done(client, submit(client, {"model": "minilm", "input": {"items": items}})["id"])
    assert job["status"] == "succeeded", job
    after = _scrape(api_url)

    def moved(name: str, **labels: str) -> float:
        return _value(after, name, **labels) - _value(before, name, **labels)

    model = job["model"]
    assert moved("modelfarm_items_processed_total", model=model, outcome="succeeded") == 5
    assert moved("modelfarm_items_processed_total", model=model, outcome="failed") == 1
    count = "modelfarm_job_duration_seconds_count"
    assert moved(count, type="inference", outcome="succeeded") >= 1
    bucket = "modelfarm_job_duration_seconds_bucket"
    assert moved(bucket, type="inference", outcome="succeeded", le="+Inf") >= 1
    assert "# TYPE modelfarm_job_duration_seconds histogram" in after
    assert "modelfarm_webhook_backlog " in after
    assert "modelfarm_webhook_failures_total " in after


def test_readyz_names_the_pools_a_farm_does_not_run_as_absent(
    services: dict[str, str], tmp_path_factory: pytest.TempPathFactory
) -> None:
    """A farm that runs no GPU pool by choice (MODELFARM_POOLS, which `up` sets) says so,
    instead of listing the pool as one whose workers are missing."""
    env = {**services, "MODELFARM_POOLS": "cpu,webhooks"}
    with api_process(env, tmp_path_factory.mktemp("logs") / "api.log") as url:
        ready = httpx.get(f"{url}/readyz", timeout=30).json()
    assert ready["pools_absent"] == ["gpu"], ready
    assert "gpu" not in ready["pools_without_workers"]
