"""Tenants' limits, keys and usage against the real API, PostgreSQL, Redis and CLI processes.

Jobs that must stay queued ask for the GPU pool, which no test here runs, so they wait
whatever CPU workers other modules started.
"""

from __future__ import annotations

import asyncio
import json
import os
import secrets
import subprocess
import sys
import time
from datetime import UTC, datetime
from typing import Any

import httpx
import pytest

from tests.helpers import assert_error, jsonl, minilm_tokens, run_job, upload, wait_until

pytestmark = pytest.mark.integration

QUEUED_JOB = {"model": "minilm", "device": "gpu", "input": {"items": [{"input": "hello"}]}}


def modelfarm(*args: str) -> subprocess.CompletedProcess[str]:
    """The CLI as a user runs it; the services fixture put the farm's URLs in the environment."""
    return subprocess.run(
        [sys.executable, "-m", "app.cli", *args],
        env=dict(os.environ),
        capture_output=True,
        text=True,
        timeout=120,
    )


def _client(api_url: str, key: str) -> httpx.Client:
    return httpx.Client(base_url=api_url, headers={"Authorization": f"Bearer {key}"}, timeout=60)


def _tenant(**limits: Any) -> tuple[str, str]:
    """(name, key) of a new tenant with these limits, written as `tenants create` does."""
    from app.services.keys import create_api_key
    from app.services.tenants import create_tenant
    from app.unit_of_work import session_scope

    name = f"lim-{secrets.token_hex(5)}"
    with session_scope() as session:
        key = create_api_key(session, create_tenant(session, name, limits))
    return name, key


def _tenant_name(key: str) -> str:
    from app.services.tenants import authenticate
    from app.unit_of_work import session_scope

    with session_scope() as session:
        tenant = authenticate(session, key)
        assert tenant is not None
        return tenant.name


def test_the_bucket_script_refills_at_the_rate(services: dict[str, str]) -> None:
    """The Lua token bucket itself, on the test Redis, with the clock given."""
    from app import ratelimit

    tenant = f"ten_bucket_{secrets.token_hex(4)}"

    def take(now_ms: int) -> ratelimit.Decision:
        return asyncio.run(ratelimit.take(tenant, 2.0, 3, now_ms=now_ms))

    assert [take(1_000_000).allowed for _ in range(3)] == [True, True, True]
    refused = take(1_000_000)
    assert not refused.allowed and refused.retry_after == 1  # 0.5 s to the next token
    assert refused.generation is not None
    assert take(1_000_499).allowed is False
    assert take(1_000_500).allowed is True
    # A long pause fills the bucket to its burst, never beyond it.
    assert [take(2_000_000).allowed for _ in range(4)] == [True, True, True, False]
    slow = asyncio.run(ratelimit.take(f"{tenant}_slow", 0.1, 1, now_ms=5_000))
    assert slow.allowed
    slow = asyncio.run(ratelimit.take(f"{tenant}_slow", 0.1, 1, now_ms=5_000))
    assert not slow.allowed and slow.retry_after == 10
    unlimited = asyncio.run(ratelimit.take(tenant, None, None))
    assert unlimited.allowed and unlimited.generation == refused.generation


def test_over_the_rate_limit_answers_429_with_retry_after(api_url: str) -> None:
    _, key = _tenant(rate_limit=1.0, rate_burst=2)
    with _client(api_url, key) as client:
        # A loaded machine may answer slowly: ask until refused (the bucket refills 1 a second,
        # so only requests slower than that could all pass).
        answers = [client.get("/v1/jobs"), client.get("/v1/jobs")]
        while answers[-1].status_code != 429 and len(answers) < 40:
            answers.append(client.get("/v1/jobs"))
        limited = [r for r in answers if r.status_code == 429]
        assert limited, [r.status_code for r in answers]
        assert answers[0].status_code == 200 and {r.status_code for r in answers} == {200, 429}
        error = assert_error(limited[0], 429, "rate_limited")
        assert "rate limit" in error["message"]
        retry_after = int(limited[0].headers["Retry-After"])
        assert retry_after >= 1
        time.sleep(retry_after)
        assert client.get("/v1/jobs").status_code == 200
        metrics = client.get("/metrics").text
    line = next(
        line
        for line in metrics.splitlines()
        if line.startswith('modelfarm_rejected_requests_total{reason="rate_limited"}')
    )
    assert float(line.split()[-1]) >= 1


def _rejected(api_url: str, reason: str) -> float:
    metrics = httpx.get(f"{api_url}/metrics").text
    prefix = f'modelfarm_rejected_requests_total{{reason="{reason}"}}'
    return next(float(line.split()[-1]) for line in metrics.splitlines() if line.startswith(prefix))


def test_429s_of_the_openai_surface_count_by_reason_too(api_url: str) -> None:
    _, key = _tenant(rate_limit=0.5, rate_burst=1)
    before = _rejected(api_url, "rate_limited")
    with _client(api_url, key) as client:
        answers = [client.get("/openai/v1/models") for _ in range(4)]
    refused = [r for r in answers if r.status_code == 429]
    assert refused and refused[0].json()["error"]["code"] == "rate_limited"
    assert _rejected(api_url, "rate_limited") - before == len(refused)


def test_the_queued_jobs_quota_names_its_limit(api_url: str) -> None:
    name, key = _tenant(max_queued_jobs=2)
    with _client(api_url, key) as client:
        for _ in range(2):
            assert client.post("/v1/jobs", json=QUEUED_JOB).status_code == 202
        refused = assert_error(client.post("/v1/jobs", json=QUEUED_JOB), 429, "quota_exceeded")
        assert f"tenant {name} has 2 jobs queued or running; its limit is 2" in refused["message"]
        # The idempotent path counts too; a repeated key still answers with its own job.
        keyed = client.post("/v1/jobs", json=QUEUED_JOB, headers={"Idempotency-Key": "k1"})
        assert_error(keyed, 429, "quota_exceeded")
        jobs = client.get("/v1/jobs").json()["data"]
        cancelled = client.post(f"/v1/jobs/{jobs[0]['id']}/cancel")
        assert cancelled.json()["status"] == "cancelled"
        first = client.post("/v1/jobs", json=QUEUED_JOB, headers={"Idempotency-Key": "k1"})
        assert first.status_code == 202
        again = client.post("/v1/jobs", json=QUEUED_JOB, headers={"Idempotency-Key": "k1"})
        assert again.status_code == 202 and again.json()["id"] == first.json()["id"]


def test_the_storage_quota_refuses_uploads_past_it(api_url: str) -> None:
    name, key = _tenant(max_storage_bytes=1000)
    with _client(api_url, key) as client:
        upload(client, b"x" * 600)
        too_much = client.post(
            "/v1/files", files={"file": ("b.jsonl", b"y" * 600)}, data={"purpose": "batch"}
        )
        error = assert_error(too_much, 413, "quota_exceeded")
        assert f"tenant {name} stores 600 bytes" in error["message"]
        assert "1000 bytes" in error["message"]
        upload(client, b"z" * 400)  # exactly to the limit
        full = client.post(
            "/v1/files", files={"file": ("c.jsonl", b"1")}, data={"purpose": "batch"}
        )
        assert "its limit is 1000 bytes" in assert_error(full, 413, "quota_exceeded")["message"]


def test_keys_list_revoke_and_expiry_through_the_cli(api_url: str) -> None:
    tenant = f"cli-{secrets.token_hex(5)}"
    created = modelfarm("keys", "create", "--tenant", tenant, "--expires-in", "30d")
    assert created.returncode == 0, created.stderr
    key = created.stdout.strip()
    assert key.startswith("mf_")
    with _client(api_url, key) as client:
        assert client.get("/v1/jobs").status_code == 200

        listed = modelfarm("keys", "list", "--tenant", tenant, "--json")
        assert listed.returncode == 0, listed.stderr
        assert key not in listed.stdout and key[10:] not in listed.stdout
        (row,) = json.loads(listed.stdout)["data"]
        assert row["prefix"] == key[:10] and row["tenant"] == tenant
        assert row["last_used_at"] is not None and row["revoked_at"] is None
        expires = datetime.fromisoformat(row["expires_at"])
        assert 29.9 < (expires - datetime.now(UTC)).total_seconds() / 86400 <= 30
        table = modelfarm("keys", "list", "--tenant", tenant)
        assert table.returncode == 0 and key[:10] in table.stdout and key not in table.stdout

        revoked = modelfarm("keys", "revoke", key[:10])
        assert revoked.returncode == 0, revoked.stderr
        # At once, in every API process: the revocation raised the auth generation.
        for _ in range(4):
            assert_error(client.get("/v1/jobs"), 401, "unauthorized")
    assert modelfarm("keys", "revoke", "mf_nothing").returncode == 1
    assert modelfarm("keys", "create", "--expires-in", "soon").returncode == 2

    short = modelfarm("keys", "create", "--tenant", tenant, "--expires-in", "1s")
    assert short.returncode == 0, short.stderr
    with _client(api_url, short.stdout.strip()) as client:

        def refused() -> httpx.Response | None:
            answer = client.get("/v1/jobs")
            return answer if answer.status_code == 401 else None

        answer = wait_until(refused, "the one-second key expired", 10)
        assert "expired" in assert_error(answer, 401, "unauthorized")["message"]


def test_tenants_through_the_cli(api_url: str) -> None:
    name = f"cli-{secrets.token_hex(5)}"
    made = modelfarm("tenants", "create", name, "--rate-limit", "50", "--max-queued-jobs", "5")
    assert made.returncode == 0, made.stderr
    assert modelfarm("tenants", "create", name).returncode == 1  # exists already
    assert modelfarm("tenants", "set", name, "--max-queued-jobs", "many").returncode == 2
    assert modelfarm("tenants", "set", "no-such-tenant", "--burst", "3").returncode == 1
    key = modelfarm("keys", "create", "--tenant", name).stdout.strip()
    with _client(api_url, key) as client:
        assert client.post("/v1/jobs", json=QUEUED_JOB).status_code == 202
        upload(client, jsonl([{"input": "a"}]))

        # Takes effect at once although the API remembers the key (and its limits).
        changed = modelfarm(
            "tenants", "set", name, "--rate-limit", "none", "--max-queued-jobs", "1",
            "--max-running-jobs", "2", "--max-storage-bytes", "1MiB",
        )  # fmt: skip
        assert changed.returncode == 0, changed.stderr
        assert_error(client.post("/v1/jobs", json=QUEUED_JOB), 429, "quota_exceeded")

        listed = modelfarm("tenants", "list", "--json")
        assert listed.returncode == 0, listed.stderr
        (row,) = [t for t in json.loads(listed.stdout)["data"] if t["name"] == name]
        assert row["rate_limit"] is None and row["max_queued_jobs"] == 1
        assert row["max_running_jobs"] == 2 and row["max_storage_bytes"] == 1024**2
        assert row["queued_jobs"] == 1 and row["running_jobs"] == 0
        assert row["storage_bytes"] > 0 and row["disabled_at"] is None
        assert name in modelfarm("tenants", "list").stdout

        assert modelfarm("tenants", "disable", name).returncode == 0
        assert_error(client.get("/v1/jobs"), 403, "tenant_disabled")
        assert modelfarm("tenants", "enable", name).returncode == 0
        assert client.get("/v1/jobs").status_code == 200


@pytest.mark.usefixtures("cpu_worker")
def test_usage_after_a_real_job(api_url: str, client: httpx.Client) -> None:
    rows = [{"custom_id": f"c{i}", "input": f"sentence {i}"} for i in range(4)]
    job = run_job(client, "minilm", jsonl(rows) + b"not json\n")
    assert job["status"] == "succeeded" and job["counts"]["failed"] == 1, job
    today = datetime.now(UTC).date().isoformat()

    by_day = client.get("/v1/usage", params={"from": today, "to": today, "group_by": "day"})
    assert by_day.status_code == 200, by_day.text
    (row,) = by_day.json()["data"]
    assert row["date"] == today and row["model"] is None and row["job_type"] is None
    # Tokens as minilm's own tokenizer counts the four texts it read (the bad line read none).
    tokens = minilm_tokens([r["input"] for r in rows])
    assert job["usage"]["tokens"] == tokens
    assert (row["jobs"], row["items"], row["failed_items"], row["tokens"]) == (1, 5, 1, tokens)
    assert row["cpu_seconds"] > 0 and row["gpu_seconds"] == 0
    assert row["completion_tokens"] == job["usage"]["completion_tokens"] == 0  # it wrote none

    by_model = client.get("/v1/usage", params={"group_by": "model,job_type"}).json()["data"]
    assert [(r["model"], r["job_type"], r["items"]) for r in by_model] == [
        ("minilm@1", "inference", 5)
    ]
    assert by_model[0]["date"] is None
    earlier = client.get("/v1/usage", params={"from": "2020-01-01", "to": "2020-01-31"})
    assert earlier.json() == {"data": []}
    for params in (
        {"group_by": "week"},
        {"from": "yesterday"},
        {"from": today, "to": "2020-01-01"},
    ):
        assert_error(client.get("/v1/usage", params=params), 422, "invalid_request")

    name = _tenant_name(client.headers["Authorization"].split()[1])
    printed = modelfarm("usage", "--tenant", name, "--group-by", "job_type", "--json")
    assert printed.returncode == 0, printed.stderr
    (line,) = json.loads(printed.stdout)["data"]
    assert (line["job_type"], line["jobs"], line["items"], line["failed_items"]) == (
        "inference",
        1,
        5,
        1,
    )
    assert line["tokens"] == tokens
    table = modelfarm("usage", "--tenant", name)
    assert table.returncode == 0 and today in table.stdout and str(tokens) in table.stdout
    assert modelfarm("usage", "--group-by", "week").returncode == 2
    assert modelfarm("usage", "--from", "someday").returncode == 2
