"""Plan messages built by the farm (app/broker/messages.py) instead of by Celery: they must be
what Celery itself pushes, and a real worker must run the job one names."""

from __future__ import annotations

import base64
import json
import secrets
import time
from collections.abc import Iterator
from typing import Any

import httpx
import pytest
import redis

from tests.helpers import wait_done

pytestmark = pytest.mark.integration


@pytest.fixture
def broker(services: dict[str, str]) -> Iterator[redis.Redis]:
    client = redis.Redis.from_url(services["MODELFARM_REDIS_URL"])
    yield client
    client.close()


def _without_ids(message: dict[str, Any]) -> dict[str, Any]:
    """A message less what differs by nature between any two: the ids minted for it."""
    headers = {k: v for k, v in message["headers"].items() if k not in ("id", "root_id")}
    properties = {
        k: v
        for k, v in message["properties"].items()
        if k not in ("correlation_id", "delivery_tag", "reply_to")
    }
    return {**message, "headers": headers, "properties": properties}


@pytest.mark.parametrize(
    ("job_priority", "step_list"), [("normal", "\x06\x163"), ("low", "\x06\x163"), ("high", "")]
)
def test_a_built_message_is_the_one_celery_pushes(
    broker: redis.Redis, job_priority: str, step_list: str
) -> None:
    """The same message, on the same one of kombu's lists of the queue (its priority step)."""
    from app.broker.dispatch import publish_job, publish_jobs

    queue = f"messages-{secrets.token_hex(4)}"  # no worker takes from it
    try:
        assert publish_job("job_by_celery", queue, job_priority)
        assert publish_jobs([("job_by_celery", queue, job_priority)]) == []
        raw = broker.lrange(queue + step_list, 0, -1)
    finally:
        # Celery declared the queue as it published: its binding keys go too.
        broker.delete(
            queue,
            queue + step_list,
            f"_kombu.binding.{queue}",
            f"_kombu.binding_permanent.{queue}",
        )
    assert len(raw) == 2
    built, celerys = (json.loads(m) for m in raw)  # the newest is leftmost
    assert _without_ids(built) == _without_ids(celerys)
    assert base64.b64decode(built["body"]) == base64.b64decode(celerys["body"])
    # The ids a worker and Flower go by are there, fresh, and tied together as Celery ties them.
    task_id = built["headers"]["id"]
    assert task_id != celerys["headers"]["id"]
    assert built["headers"]["root_id"] == built["properties"]["correlation_id"] == task_id
    assert built["properties"]["delivery_tag"] != celerys["properties"]["delivery_tag"]


def test_messages_of_a_batch_go_to_their_queues_in_order(broker: redis.Redis) -> None:
    from app.broker.dispatch import publish_jobs

    first, second = (f"messages-{secrets.token_hex(4)}" for _ in range(2))
    jobs = [
        ("job_a", first, "normal"),
        ("job_b", second, "normal"),
        ("job_c", first, "normal"),
        ("job_d", first, "normal"),
    ]
    lists = {q: f"{q}\x06\x163" for q in (first, second)}  # kombu's list of step 3
    try:
        assert publish_jobs(jobs) == []
        # A worker takes from the right end of the list (BRPOP): oldest first.
        taken = {
            q: [broker.rpop(name) for _ in range(broker.llen(name))] for q, name in lists.items()
        }
    finally:
        broker.delete(*lists.values())

    def job_ids(messages: list[Any]) -> list[str]:
        return [json.loads(base64.b64decode(json.loads(m)["body"]))[0][0] for m in messages]

    assert job_ids(taken[first]) == ["job_a", "job_c", "job_d"]
    assert job_ids(taken[second]) == ["job_b"]


@pytest.mark.usefixtures("cpu_worker")
def test_a_worker_runs_the_job_a_built_message_names(client: httpx.Client) -> None:
    """Written without a message (as the committer writes it), then published by
    `publish_jobs` alone: the Celery worker takes the built message and the job succeeds."""
    from app.broker.dispatch import publish_jobs
    from app.models import Tenant
    from app.schemas.jobs import JobCreate
    from app.services import jobs as job_service
    from app.services.tenants import authenticate
    from app.unit_of_work import session_scope

    key = client.headers["Authorization"].split()[1]
    body = JobCreate.model_validate(
        {"model": "minilm", "device": "cpu", "input": {"items": [{"input": "built by hand"}]}}
    )
    with session_scope() as session:
        tenant = authenticate(session, key)
        assert isinstance(tenant, Tenant)
        submission = job_service.prepare_submission(session, tenant, body)
    with session_scope() as session:
        job_service.insert_submissions(session, [submission])
    job_id = submission.job.id
    assert client.get(f"/v1/jobs/{job_id}").json()["status"] == "queued"

    assert publish_jobs([(job_id, "cpu", "normal")]) == []
    done = wait_done(client, job_id)
    assert done["status"] == "succeeded", done
    assert done["counts"] == {"total": 1, "succeeded": 1, "failed": 0}


def test_a_broker_that_is_down_refuses_every_message_at_once(
    services: dict[str, str], monkeypatch: pytest.MonkeyPatch
) -> None:
    from app.broker.dispatch import publish_jobs
    from app.config import get_settings
    from app.local.embedded import free_port

    monkeypatch.setenv("MODELFARM_BROKER_URL", f"redis://127.0.0.1:{free_port()}/0")
    get_settings.cache_clear()
    try:
        started = time.monotonic()
        refused = publish_jobs([("job_a", "cpu", "normal"), ("job_b", "gpu", "high")])
        assert time.monotonic() - started < 3  # refused connections fail fast, no retry loop
    finally:
        monkeypatch.delenv("MODELFARM_BROKER_URL")
        get_settings.cache_clear()
    assert refused == ["job_a", "job_b"]
