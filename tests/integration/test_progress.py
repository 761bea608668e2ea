"""Progress people can watch: a running job's counts move in many steps, its `progress` says
its rate and ETA, and the Python client's on_progress hears about it every second or so."""

from __future__ import annotations

from typing import Any

import pytest

from modelfarm_client import Client
from tests.helpers import FarmProcess, jsonl

pytestmark = pytest.mark.integration


def test_a_running_job_reports_rate_and_eta_to_on_progress(
    api_url: str, tenant_key: str, cpu_worker: FarmProcess
) -> None:
    seen: list[dict[str, Any]] = []
    # Long enough to run several seconds on an idle machine: counts are recorded about once a
    # second (PROGRESS_SECONDS), so a job of a second or two moves them only once or twice.
    rows = [
        {"custom_id": i, "input": f"progress item {i} " + "word " * (i % 20)} for i in range(2000)
    ]
    with Client(api_url, tenant_key, timeout=60) as farm:
        file = farm.upload(jsonl(rows))
        job = farm.create_job({"model": "minilm", "input": {"file_id": file["id"]}})
        done = farm.wait(job["id"], timeout=300, on_progress=seen.append)
    assert done["status"] == "succeeded" and done["counts"]["succeeded"] == 2000
    assert done["progress"] is None  # an inference job that ended has no rate any more
    running = [j for j in seen if j["status"] == "running"]
    moved = {j["counts"]["succeeded"] for j in running}
    assert len(moved) >= 3, [j["counts"] for j in seen]  # counts moved while it ran, in steps
    measured = [j["progress"] for j in running if j["counts"]["succeeded"]]
    assert measured and all(p["items_per_second"] > 0 for p in measured), measured
    assert all(p["eta_seconds"] is not None and p["eta_seconds"] >= 0 for p in measured)
