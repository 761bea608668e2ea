"""/ui over plain HTTP (the browser test in tests/e2e needs Chromium): log in, the cookie, the
pages and their partials, and what happens without a key."""

from __future__ import annotations

import httpx
import pytest

from tests.helpers import FarmProcess, run_job, submit, upload

pytestmark = pytest.mark.integration


def test_log_in_with_a_key_and_see_the_jobs(
    api_url: str, client: httpx.Client, tenant_key: str
) -> None:
    job = submit(client, {"model": "minilm", "device": "gpu", "input": {"items": [{"input": "x"}]}})
    with httpx.Client(base_url=api_url, timeout=30) as browser:
        assert browser.get("/ui").headers["location"] == "/ui/login"
        assert browser.get("/ui?partial=1").status_code == 401
        wrong = browser.post("/ui/login", data={"key": "mf_wrong"})
        assert wrong.status_code == 401 and "not valid" in wrong.text
        login = browser.post("/ui/login", data={"key": tenant_key})
        assert login.status_code == 303 and login.headers["location"] == "/ui"
        cookie = login.headers["set-cookie"].lower()
        assert "httponly" in cookie and "samesite=strict" in cookie and "path=/ui" in cookie
        assert tenant_key not in login.headers["location"]

        page = browser.get("/ui")
        assert page.status_code == 200 and job["id"] in page.text
        assert "/ui/static/ui.css" in page.text and "https://" not in page.text
        assert browser.get("/ui/static/ui.js").status_code == 200
        partial = browser.get("/ui?partial=1")
        assert job["id"] in partial.text and "<html" not in partial.text
        detail = browser.get(f"/ui/jobs/{job['id']}")
        assert detail.status_code == 200 and "queued" in detail.text
        assert browser.get("/ui/jobs/job_nope").status_code == 404
        pools = browser.get("/ui/pools?partial=1")
        assert pools.status_code == 200 and 'data-pool="gpu"' in pools.text

        browser.post("/ui/logout")
        assert browser.get("/ui?partial=1").status_code == 401
    client.post(f"/v1/jobs/{job['id']}/cancel")


def test_the_job_page_links_its_files_for_download(
    api_url: str,
    client: httpx.Client,
    other_client: httpx.Client,
    tenant_key: str,
    cpu_worker: FarmProcess,
) -> None:
    done = run_job(client, "minilm", [{"custom_id": "a", "input": "hello"}])
    theirs = upload(other_client, b'{"input": "theirs"}\n')
    with httpx.Client(base_url=api_url, timeout=30) as browser:
        assert browser.get(f"/ui/files/{done['output_file_id']}").status_code == 303  # login
        browser.post("/ui/login", data={"key": tenant_key})
        page = browser.get(f"/ui/jobs/{done['id']}").text
        assert f'href="/ui/files/{done["output_file_id"]}"' in page
        got = browser.get(f"/ui/files/{done['output_file_id']}")
        assert got.status_code == 200 and "attachment" in got.headers["content-disposition"]
        assert got.content == client.get(f"/v1/files/{done['output_file_id']}/content").content
        assert browser.get(f"/ui/files/{theirs['id']}").status_code == 404  # not this tenant's


def test_the_job_page_cancels_and_retries(
    api_url: str, client: httpx.Client, tenant_key: str, cpu_worker: FarmProcess
) -> None:
    stuck = submit(
        client, {"model": "minilm", "device": "gpu", "input": {"items": [{"input": "x"}]}}
    )
    bad = run_job(client, "minilm", b'{"custom_id": "ok", "input": "fine"}\n{not json\n')
    with httpx.Client(base_url=api_url, timeout=30) as browser:
        browser.post("/ui/login", data={"key": tenant_key})
        assert (
            'action="/ui/jobs/' + stuck["id"] + '/cancel"'
            in browser.get(f"/ui/jobs/{stuck['id']}").text
        )
        cancelled = browser.post(f"/ui/jobs/{stuck['id']}/cancel")
        assert cancelled.status_code == 303
        assert client.get(f"/v1/jobs/{stuck['id']}").json()["status"] == "cancelled"
        refused = browser.post(f"/ui/jobs/{stuck['id']}/retry")  # no failed items: the 409
        assert refused.status_code == 409 and "no failed items" in refused.text, refused.text
        assert "Back to the job" in refused.text

        assert "/retry" in browser.get(f"/ui/jobs/{bad['id']}").text
        retried = browser.post(f"/ui/jobs/{bad['id']}/retry")
        assert retried.status_code == 303
        new_id = retried.headers["location"].rsplit("/", 1)[-1]
        assert client.get(f"/v1/jobs/{new_id}").json()["retry_of"] == bad["id"]
        browser.post("/ui/logout")
        assert browser.post(f"/ui/jobs/{bad['id']}/retry").status_code == 303  # to the login
    assert client.get("/v1/jobs", params={"limit": 100}).json()["data"][0]["id"] == new_id
