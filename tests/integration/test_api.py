"""The HTTP contract of docs/api.md: auth, errors, files, jobs, pages, idempotency, isolation."""

from __future__ import annotations

import threading
import time

import httpx
import pytest

from tests.helpers import all_pages, assert_error, jsonl, submit, upload

pytestmark = pytest.mark.integration

ITEMS = {"items": [{"custom_id": "a", "input": "hello"}]}


def test_health_needs_no_key(api_url: str) -> None:
    assert httpx.get(f"{api_url}/healthz").json() == {"status": "ok"}
    ready = httpx.get(f"{api_url}/readyz")
    assert ready.status_code == 200 and ready.json()["database"] == "ok", ready.text
    metrics = httpx.get(f"{api_url}/metrics")
    assert metrics.status_code == 200
    assert "modelfarm_http_request_duration_seconds" in metrics.text


def test_metrics_count_every_api_process(api_url: str, tenant_key: str) -> None:
    """The API runs several processes (one per core); a scrape answered by any one of them
    counts the jobs all of them accepted. Each call here opens a new connection, so the calls
    spread over the processes."""
    import re

    def submitted() -> float:
        text = httpx.get(f"{api_url}/metrics").text
        return sum(
            float(m)
            for m in re.findall(r"^modelfarm_jobs_submitted_total\{[^}]*\} (\S+)$", text, re.M)
        )

    before = submitted()
    for _ in range(6):
        answer = httpx.post(
            f"{api_url}/v1/jobs",
            json={"model": "minilm", "input": ITEMS},
            headers={"Authorization": f"Bearer {tenant_key}"},
        )
        assert answer.status_code == 202, answer.text
    assert [submitted() - before for _ in range(4)] == [6.0] * 4


def test_every_v1_call_needs_a_valid_key(api_url: str) -> None:
    assert_error(httpx.get(f"{api_url}/v1/jobs"), 401, "unauthorized")
    bad = httpx.get(f"{api_url}/v1/jobs", headers={"Authorization": "Bearer mf_nope"})
    assert_error(bad, 401, "unauthorized")
    basic = httpx.get(f"{api_url}/v1/models", headers={"Authorization": "Basic abc"})
    assert_error(basic, 401, "unauthorized")


def test_upload_and_download_round_trip(client: httpx.Client) -> None:
    content = jsonl([{"custom_id": "x", "input": "héllo"}]) * 3
    file = upload(client, content)
    assert file["bytes"] == len(content) and file["purpose"] == "batch"
    assert client.get(f"/v1/files/{file['id']}").json()["id"] == file["id"]
    assert client.get(f"/v1/files/{file['id']}/content").content == content


def test_upload_errors(client: httpx.Client) -> None:
    assert_error(
        client.post("/v1/files", files={"file": ("a", b"x")}, data={"purpose": "nonsense"}),
        422,
        "invalid_request",
    )
    assert_error(client.post("/v1/files", data={"purpose": "batch"}), 422)
    assert_error(client.get("/v1/files/file_missing"), 404, "not_found")


def test_upload_over_the_limit_is_413(
    api_url: str,
    services: dict[str, str],
    tmp_path_factory: pytest.TempPathFactory,
    tenant_key: str,
) -> None:
    from app.local.embedded import free_port
    from tests.helpers import FarmProcess, wait_for_http

    port = free_port()
    env = {
        **services,
        "MODELFARM_API_PORT": str(port),
        "MODELFARM_MAX_UPLOAD_BYTES": "1000",
        "MODELFARM_MAX_REQUEST_BYTES": "2000",
    }
    proc = FarmProcess.start(["api"], env, tmp_path_factory.mktemp("small") / "api.log")
    try:
        base = f"http://127.0.0.1:{port}"
        wait_for_http(f"{base}/healthz", proc)
        auth = {"Authorization": f"Bearer {tenant_key}"}
        # Over the limit with a Content-Length: refused before the body is read.
        big = httpx.post(
            f"{base}/v1/files",
            headers=auth,
            data={"purpose": "batch"},
            files={"file": ("big.jsonl", b"x" * 200_000)},
        )
        assert_error(big, 413, "payload_too_large")
        # Just over the limit, within the multipart slack: refused while copying.
        near = httpx.post(
            f"{base}/v1/files",
            headers=auth,
            data={"purpose": "batch"},
            files={"file": ("near.jsonl", b"x" * 1001)},
        )
        assert_error(near, 413, "payload_too_large")
        ok = httpx.post(
            f"{base}/v1/files",
            headers=auth,
            data={"purpose": "batch"},
            files={"file": ("ok.jsonl", b"x" * 1000)},
        )
        assert ok.status_code == 201, ok.text
        # Any other body over MAX_REQUEST_BYTES, refused before it is parsed (or authorised).
        items = [{"custom_id": str(i), "input": "x" * 50} for i in range(60)]
        body = {"model": "minilm", "input": {"items": items}}
        assert_error(httpx.post(f"{base}/v1/jobs", json=body, headers=auth), 413)
        assert_error(httpx.post(f"{base}/v1/jobs", json=body), 413)
    finally:
        proc.stop()


def test_job_body_errors_are_422(client: httpx.Client) -> None:
    cases = [
        {},  # no input
        {"model": "minilm", "input": {}},
        {"model": "minilm", "input": {"items": []}},
        {"model": "minilm", "input": {"file_id": "f", "items": [{"input": "a"}]}},
        {"input": ITEMS},  # no model
        {"model": "minilm", "input": ITEMS, "device": "tpu"},
        {"model": "minilm", "input": ITEMS, "surprise": 1},
        {"model": "minilm", "input": ITEMS, "params": {"batch_size": 0}},
        {"model": "minilm", "input": ITEMS, "webhook": {"url": "not a url"}},
        {"model": "minilm@x", "input": ITEMS},
    ]
    for body in cases:
        assert_error(client.post("/v1/jobs", json=body), 422)
    malformed = client.post(
        "/v1/jobs", content=b"{not json", headers={"Content-Type": "application/json"}
    )
    assert_error(malformed, 422, "invalid_request")


def test_unknown_model_and_file_are_404(client: httpx.Client) -> None:
    assert_error(client.post("/v1/jobs", json={"model": "nope", "input": ITEMS}), 404)
    assert_error(client.post("/v1/jobs", json={"model": "minilm@2", "input": ITEMS}), 404)
    body = {"model": "minilm", "input": {"file_id": "file_nope"}}
    assert_error(client.post("/v1/jobs", json=body), 404)


def test_too_many_inline_items(client: httpx.Client) -> None:
    items = [{"custom_id": str(i), "input": "x"} for i in range(1001)]
    error = assert_error(
        client.post("/v1/jobs", json={"model": "minilm", "input": {"items": items}}),
        422,
        "too_many_items",
    )
    assert "1001" in error["message"]


def test_job_shape_and_events(client: httpx.Client) -> None:
    job = submit(client, {"model": "minilm", "input": ITEMS, "metadata": {"team": "search"}})
    assert job["object"] == "job" and job["id"].startswith("job_")
    assert job["model"] == "minilm@1" and job["type"] == "inference"
    assert job["device"] == "auto" and job["queue"] == "cpu"
    assert job["metadata"] == {"team": "search"}
    assert job["counts"] == {"total": 0, "succeeded": 0, "failed": 0}
    assert job["input_file_id"].startswith("file_")
    events = all_pages(client, f"/v1/jobs/{job['id']}/events")
    assert [e["type"] for e in events][:2] == ["queued", "dispatched"]


def test_idempotency_key_returns_the_same_job(client: httpx.Client) -> None:
    body = {"model": "minilm", "input": ITEMS}
    first = submit(client, body, **{"Idempotency-Key": "k-1"})
    again = submit(client, body, **{"Idempotency-Key": "k-1"})
    other = submit(client, body, **{"Idempotency-Key": "k-2"})
    assert first["id"] == again["id"] != other["id"]


def test_racing_requests_with_one_idempotency_key_make_one_job(
    client: httpx.Client, api_url: str, tenant_key: str
) -> None:
    """Eight clients send one key at once, through the API's several processes: every answer
    is a 202 naming the same job, one job exists, and its message went out once."""
    from concurrent.futures import ThreadPoolExecutor

    from sqlalchemy import func, select

    from app.models import Job, JobEvent
    from app.unit_of_work import session_scope

    body = {"model": "minilm", "input": ITEMS}
    key = f"race-{time.time_ns()}"
    start = threading.Barrier(8)

    def send(_: int) -> httpx.Response:
        with httpx.Client(
            base_url=api_url, headers={"Authorization": f"Bearer {tenant_key}"}
        ) as own:
            own.get("/healthz")  # connected before the race starts
            start.wait()
            return own.post("/v1/jobs", json=body, headers={"Idempotency-Key": key})

    with ThreadPoolExecutor(8) as pool:
        answers = list(pool.map(send, range(8)))
    assert [a.status_code for a in answers] == [202] * 8, [a.text for a in answers]
    assert len({a.json()["id"] for a in answers}) == 1
    with session_scope() as session:
        assert session.scalar(select(func.count()).where(Job.idempotency_key == key)) == 1
        dispatched = session.scalar(
            select(func.count()).where(
                JobEvent.job_id == answers[0].json()["id"], JobEvent.type == "dispatched"
            )
        )
        assert dispatched == 1


def test_events_and_deliveries_come_a_page_at_a_time(client: httpx.Client) -> None:
    """Like job lists (`limit`, `after`, `has_more`, `last_id`), but oldest first."""
    job = submit(client, {"model": "minilm", "input": ITEMS})
    path = f"/v1/jobs/{job['id']}/events"
    everything = all_pages(client, path)
    assert [e["type"] for e in everything][:2] == ["queued", "dispatched"]
    first = client.get(path, params={"limit": 1}).json()
    assert first["data"] == everything[:1] and first["has_more"] is True
    assert first["last_id"] == everything[0]["id"]
    rest = client.get(path, params={"limit": 100, "after": first["last_id"]}).json()
    # A worker may be running the job meanwhile: its newer events come after these.
    assert rest["data"][: len(everything) - 1] == everything[1:] and rest["has_more"] is False
    assert rest["last_id"] == rest["data"][-1]["id"]
    for bad in ({"limit": 0}, {"limit": 101}, {"after": "x"}, {"after": -1}):
        assert_error(client.get(path, params=bad), 422)
    assert_error(client.get(path, params={"after": 10**12}), 404)
    deliveries = client.get(f"/v1/jobs/{job['id']}/deliveries").json()
    assert deliveries == {"object": "list", "data": [], "has_more": False, "last_id": None}
    deliveries_path = f"/v1/jobs/{job['id']}/deliveries"
    assert_error(client.get(deliveries_path, params={"after": "dlv_unknown"}), 404)


def test_list_pagination_newest_first(client: httpx.Client) -> None:
    ids = [submit(client, {"model": "minilm", "input": ITEMS})["id"] for _ in range(5)]
    page1 = client.get("/v1/jobs", params={"limit": 2}).json()
    assert [j["id"] for j in page1["data"]] == ids[::-1][:2]
    assert page1["has_more"] is True and page1["last_id"] == ids[3]
    page2 = client.get("/v1/jobs", params={"limit": 2, "after": page1["last_id"]}).json()
    assert [j["id"] for j in page2["data"]] == [ids[2], ids[1]]
    page3 = client.get("/v1/jobs", params={"limit": 2, "after": page2["last_id"]}).json()
    assert [j["id"] for j in page3["data"]] == [ids[0]] and page3["has_more"] is False
    for bad in ({"limit": 0}, {"limit": 101}, {"status": "sleeping"}, {"type": "x"}):
        assert_error(client.get("/v1/jobs", params=bad), 422)
    assert_error(client.get("/v1/jobs", params={"after": "job_unknown"}), 404)


def test_tenants_see_only_their_own(client: httpx.Client, other_client: httpx.Client) -> None:
    file = upload(client, jsonl([{"custom_id": "a", "input": "x"}]))
    job = submit(client, {"model": "minilm", "input": {"file_id": file["id"]}})
    for path in (
        f"/v1/files/{file['id']}",
        f"/v1/files/{file['id']}/content",
        f"/v1/jobs/{job['id']}",
        f"/v1/jobs/{job['id']}/events",
    ):
        assert_error(other_client.get(path), 404, "not_found")
    assert_error(other_client.post(f"/v1/jobs/{job['id']}/cancel"), 404)
    stolen = {"model": "minilm", "input": {"file_id": file["id"]}}
    assert_error(other_client.post("/v1/jobs", json=stolen), 404)
    assert job["id"] not in [j["id"] for j in other_client.get("/v1/jobs").json()["data"]]


def test_cancel_a_queued_job(client: httpx.Client) -> None:
    # No worker listens on the gpu queue in this test, so the job stays queued.
    job = submit(client, {"model": "minilm", "input": ITEMS, "device": "gpu"})
    assert job["queue"] == "gpu" and job["status"] == "queued"
    cancelled = client.post(f"/v1/jobs/{job['id']}/cancel")
    assert cancelled.status_code == 200 and cancelled.json()["status"] == "cancelled"
    assert cancelled.json()["finished_at"] is not None
    # Cancelling again is harmless; the job stays cancelled.
    assert client.post(f"/v1/jobs/{job['id']}/cancel").json()["status"] == "cancelled"
    assert (
        client.get("/v1/jobs", params={"status": "cancelled"}).json()["data"][0]["id"] == job["id"]
    )


def test_prefer_wait_returns_early_for_a_finished_job(client: httpx.Client) -> None:
    job = submit(client, {"model": "minilm", "input": ITEMS, "device": "gpu"})
    client.post(f"/v1/jobs/{job['id']}/cancel")
    start = time.monotonic()
    got = client.get(f"/v1/jobs/{job['id']}", headers={"Prefer": "wait=10"})
    assert time.monotonic() - start < 2
    assert got.json()["status"] == "cancelled"


def test_prefer_wait_holds_until_the_limit(client: httpx.Client) -> None:
    job = submit(client, {"model": "minilm", "input": ITEMS, "device": "gpu"})
    start = time.monotonic()
    got = client.get(f"/v1/jobs/{job['id']}", headers={"Prefer": "wait=1.5"})
    elapsed = time.monotonic() - start
    assert got.status_code == 200 and got.json()["status"] == "queued"
    assert got.headers["Preference-Applied"] == "wait=1.5"
    assert 1.4 <= elapsed < 5
    client.post(f"/v1/jobs/{job['id']}/cancel")


def test_values_the_database_cannot_store_are_422(client: httpx.Client) -> None:
    body = {"model": "minilm", "input": ITEMS, "metadata": {"k": "a\u0000b"}}
    assert_error(client.post("/v1/jobs", json=body), 422)
    assert_error(client.get("/v1/jobs/job_a%00b"), 422)


def test_any_filename_round_trips(client: httpx.Client) -> None:
    file = upload(client, b'{"input": "x"}\n', name="données v2 数据.jsonl")
    response = client.get(f"/v1/files/{file['id']}/content")
    assert response.status_code == 200
    disposition = response.headers["content-disposition"]
    assert "filename*=UTF-8''donn%C3%A9es%20v2%20%E6%95%B0%E6%8D%AE.jsonl" in disposition
    assert 'filename="donn_es v2 __.jsonl"' in disposition
