"""Webhooks end to end: a real receiver on loopback, a real webhooks worker, real signatures.

The test farm allows 127.0.0.1 (WEBHOOK_ALLOWED_HOSTS) and retries after 0.5, 0.5, 1, 1, 2, 2 s.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

import httpx
import pytest
from standardwebhooks.webhooks import WebhookVerificationError

from tests.helpers import all_pages, assert_error, submit, wait_done, wait_until
from tests.receiver import Reply, receiver, verify

pytestmark = [
    pytest.mark.integration,
    pytest.mark.usefixtures("cpu_worker", "sweeper", "webhook_worker"),
]

ITEMS = [{"custom_id": i, "input": f"sentence number {i}"} for i in range(3)]


def _job(client: httpx.Client, url: str, events: list[str] | None = None, **extra: Any) -> dict:
    webhook: dict[str, Any] = {"url": url}
    if events is not None:
        webhook["events"] = events
    body = {"model": "minilm", "input": {"items": ITEMS}, "webhook": webhook, **extra}
    return submit(client, body)


def _deliveries(client: httpx.Client, job_id: str) -> list[dict[str, Any]]:
    return all_pages(client, f"/v1/jobs/{job_id}/deliveries")


def _wait_delivery(
    client: httpx.Client, job_id: str, status: str, timeout: float = 30
) -> dict[str, Any]:

    def found() -> list[dict[str, Any]]:
        return [d for d in _deliveries(client, job_id) if d["status"] == status]

    return wait_until(found, f"a {status} delivery for {job_id}", timeout)[0]


def _all_delivered(client: httpx.Client, job_id: str, timeout: float = 30) -> list[Any]:
    """Wait until every delivery of a job has succeeded: what the receiver got by then is all
    it will get. An ended job's deliveries are all written already (with its transitions, an
    outbox), so this waits on the farm's state instead of sleeping for "nothing else comes"."""

    def delivered() -> list[Any] | None:
        deliveries = _deliveries(client, job_id)
        return deliveries if all(d["status"] == "succeeded" for d in deliveries) else None

    return wait_until(delivered, f"every delivery of {job_id} succeeded", timeout)


def _secret(client: httpx.Client) -> str:
    response = client.get("/v1/webhooks/secret")
    assert response.status_code == 200, response.text
    return response.json()["key"]


def test_terminal_event_is_signed_and_carries_the_job(client: httpx.Client) -> None:
    secret = _secret(client)
    assert secret.startswith("whsec_") and _secret(client) == secret  # stable until rotated
    with receiver() as hook:
        job = _job(client, hook.url)
        finished = wait_done(client, job["id"])
        (request,) = hook.wait_for(1)
        # Nothing else comes: the default events are the terminal ones.
        assert len(_all_delivered(client, job["id"])) == 1
        assert len(hook.requests) == 1
    payload = verify(secret, request)
    assert payload["type"] == "job.succeeded"
    assert payload["data"]["id"] == job["id"] and payload["data"]["status"] == "succeeded"
    assert payload["data"]["counts"] == {"total": 3, "succeeded": 3, "failed": 0}
    assert request.headers["webhook-id"].startswith("msg_")
    with pytest.raises(WebhookVerificationError):
        verify("whsec_" + "A" * 43 + "=", request)  # another secret does not verify
    finished_at = datetime.fromisoformat(finished["finished_at"]).timestamp()
    print(f"webhook latency (job finished -> receiver got it): {request.at - finished_at:.3f}s")
    (delivery,) = _deliveries(client, job["id"])
    assert delivery["status"] == "succeeded" and delivery["event"] == "job.succeeded"
    assert delivery["webhook_id"] == request.headers["webhook-id"]
    assert [a["status_code"] for a in delivery["attempts"]] == [200]


def test_fails_twice_then_accepts_with_one_webhook_id(client: httpx.Client) -> None:
    secret = _secret(client)
    with receiver() as hook:
        hook.script = [Reply(500), Reply(502)]
        job = _job(client, hook.url)
        requests = hook.wait_for(3)
        delivery = _wait_delivery(client, job["id"], "succeeded")
    assert len({r.headers["webhook-id"] for r in requests}) == 1
    assert all(verify(secret, r)["type"] == "job.succeeded" for r in requests)
    assert [a["status_code"] for a in delivery["attempts"]] == [500, 502, 200]
    assert [a["number"] for a in delivery["attempts"]] == [1, 2, 3]
    assert delivery["attempts"][0]["error"] == "HTTP 500"
    assert all(a["duration_ms"] is not None for a in delivery["attempts"])


def test_receiver_down_then_up_gets_every_event(client: httpx.Client) -> None:
    with receiver() as hook:
        port, url = hook.port, hook.url
    # Nothing listens on the port now: the first attempts fail to connect.
    job = _job(client, url, events=["job.started", "job.succeeded"])
    wait_done(client, job["id"])

    def tried() -> list[dict[str, Any]] | None:
        attempted = [d for d in _deliveries(client, job["id"]) if d["attempts"]]
        return attempted if len(attempted) == 2 else None

    tried_twice = wait_until(tried, "both deliveries tried", 30)
    assert all(d["status"] != "succeeded" for d in tried_twice)
    assert "ConnectError" in (tried_twice[0]["attempts"][0]["error"] or "")
    with receiver(port) as hook:
        hook.wait_for(2)
        assert len(_all_delivered(client, job["id"])) == 2
        assert sorted(hook.events()) == ["job.started", "job.succeeded"]
    assert all(d["status"] == "succeeded" for d in _deliveries(client, job["id"]))


def test_event_filter_and_progress(client: httpx.Client) -> None:
    with receiver() as hook:
        job = _job(client, hook.url, events=["job.started"])
        wait_done(client, job["id"])
        hook.wait_for(1)
        assert len(_all_delivered(client, job["id"])) == 1
        assert hook.events() == ["job.started"]
        started = hook.requests[0].event["data"]
        assert started["status"] == "running" and started["id"] == job["id"]

    items = [{"custom_id": i, "input": f"a somewhat longer sentence {i} " * 4} for i in range(600)]
    with receiver() as hook:
        body = {
            "model": "minilm",
            "input": {"items": items},
            "webhook": {"url": hook.url, "events": ["job.progress", "job.succeeded"]},
        }
        job = submit(client, body)
        wait_done(client, job["id"])
        _all_delivered(client, job["id"])
        events = hook.events()
    assert events.count("job.succeeded") == 1
    assert set(events) == {"job.progress", "job.succeeded"}
    progress = [r.event for r in hook.requests if r.event["type"] == "job.progress"]
    assert all(p["data"]["counts"]["total"] == 600 for p in progress)
    stamps = sorted(datetime.fromisoformat(p["timestamp"]).timestamp() for p in progress)
    # At most one a second: the throttle reads the clock a few database round trips before the
    # body's timestamp is taken, and on a loaded machine those vary by more than 10 ms.
    assert all(b - a >= 0.9 for a, b in zip(stamps, stamps[1:], strict=False)), stamps


@pytest.mark.parametrize(
    ("url", "why"),
    [
        ("http://127.0.0.2/hook", "loopback"),
        ("http://[::1]/hook", "loopback"),
        ("http://10.1.2.3/hook", "private"),
        ("http://192.168.0.10/hook", "private"),
        ("http://172.16.5.4/hook", "private"),
        ("http://169.254.169.254/latest/meta-data", "link-local"),
        ("http://[fe80::1]/hook", "link-local"),
        ("http://224.0.0.1/hook", "multicast"),
        ("http://240.0.0.1/hook", "reserved"),
        ("http://0.0.0.0/hook", "unspecified"),
        ("http://[::ffff:10.0.0.1]/hook", "private"),
        ("http://100.64.0.1/hook", "non-global"),
        ("http://does-not-exist.invalid/hook", "does not resolve"),
    ],
)
def test_inner_addresses_are_refused_at_submit(client: httpx.Client, url: str, why: str) -> None:
    body = {"model": "minilm", "input": {"items": ITEMS}, "webhook": {"url": url}}
    error = assert_error(client.post("/v1/jobs", json=body), 422, "webhook_url_refused")
    assert why in error["message"]
    assert client.get("/v1/jobs").json()["data"] == []  # no job was created


@pytest.mark.parametrize("url", ["ftp://127.0.0.1/hook", "file:///etc/passwd", "not a url"])
def test_non_http_urls_are_refused(client: httpx.Client, url: str) -> None:
    body = {"model": "minilm", "input": {"items": ITEMS}, "webhook": {"url": url}}
    assert_error(client.post("/v1/jobs", json=body), 422)
    assert client.get("/v1/jobs").json()["data"] == []


def test_gone_stops_and_redeliver_sends_the_same_message(client: httpx.Client) -> None:
    secret = _secret(client)
    with receiver() as hook:
        hook.script = [Reply(410)]
        job = _job(client, hook.url)
        delivery = _wait_delivery(client, job["id"], "failed")
        assert [a["status_code"] for a in delivery["attempts"]] == [410]
        # 410 Gone: no retry. The delivery ended with nothing scheduled: no attempt will come.
        assert delivery["next_attempt_at"] is None
        assert len(hook.requests) == 1
        response = client.post(f"/v1/jobs/{job['id']}/deliveries/{delivery['id']}/redeliver")
        assert response.status_code == 202, response.text
        first, again = hook.wait_for(2)
        delivery = _wait_delivery(client, job["id"], "succeeded")
    assert again.headers["webhook-id"] == first.headers["webhook-id"]
    assert again.body == first.body and verify(secret, again)["type"] == "job.succeeded"
    assert [a["status_code"] for a in delivery["attempts"]] == [410, 200]
    missing = client.post(f"/v1/jobs/{job['id']}/deliveries/dlv_nope/redeliver")
    assert_error(missing, 404)


def test_last_attempt_fails_visibly(client: httpx.Client) -> None:
    with receiver() as hook:
        hook.script = [Reply(500)] * 7  # one first attempt + six retries in the test schedule
        job = _job(client, hook.url)
        delivery = _wait_delivery(client, job["id"], "failed", timeout=60)
        assert len(hook.requests) == 7
    assert delivery["last_status_code"] == 500 and len(delivery["attempts"]) == 7
    assert delivery["next_attempt_at"] is None


def test_redirects_are_failures_and_retry_after_is_honoured(client: httpx.Client) -> None:
    with receiver() as hook:
        elsewhere = f"http://127.0.0.1:{hook.port}/elsewhere"
        hook.script = [Reply(302, {"location": elsewhere}), Reply(503, {"retry-after": "3"})]
        job = _job(client, hook.url)
        first, second, third = hook.wait_for(3)
        delivery = _wait_delivery(client, job["id"], "succeeded")
    assert {r.path for r in (first, second, third)} == {"/hook"}  # the redirect was not followed
    assert "redirects are not followed" in delivery["attempts"][0]["error"]
    assert third.at - second.at >= 2.9  # the schedule says 0.5 s; the receiver asked for 3


def test_rotation_signs_with_both_secrets(client: httpx.Client) -> None:
    old = _secret(client)
    response = client.post("/v1/webhooks/secret/rotate")
    assert response.status_code == 200, response.text
    new = response.json()["key"]
    assert new != old and _secret(client) == new
    with receiver() as hook:
        _job(client, hook.url)
        (request,) = hook.wait_for(1)
    assert len(request.headers["webhook-signature"].split(" ")) == 2
    assert verify(old, request) == verify(new, request)


def test_another_tenant_sees_no_deliveries(
    client: httpx.Client, other_client: httpx.Client
) -> None:
    with receiver() as hook:
        job = _job(client, hook.url)
        delivery = _wait_delivery(client, job["id"], "succeeded")
    assert_error(other_client.get(f"/v1/jobs/{job['id']}/deliveries"), 404)
    redeliver = f"/v1/jobs/{job['id']}/deliveries/{delivery['id']}/redeliver"
    assert_error(other_client.post(redeliver), 404)
    assert _secret(other_client) != _secret(client)
