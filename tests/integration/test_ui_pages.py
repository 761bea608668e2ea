"""/ui over plain HTTP (the browser test in tests/e2e needs Chromium): log in, the cookie, the
pages and their partials, what happens without a key, the forms that act (submit, cancel,
retry) with their CSRF token, and the lists of files and models, each tenant's own."""

from __future__ import annotations

import json
import re
import secrets
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import httpx
import pytest

from tests.helpers import (
    FarmProcess,
    read_lines,
    register_model,
    run_job,
    submit,
    upload,
    wait_done,
    wait_model,
)

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


def _csrf(page: httpx.Response) -> str:
    found = re.search(r'name="csrf" value="([0-9a-f]{64})"', page.text)
    assert found, page.text[:2000]
    return found.group(1)


@contextmanager
def _logged_in(api_url: str, key: str) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=api_url, timeout=60) as browser:
        assert browser.post("/ui/login", data={"key": key}).status_code == 303
        yield browser


def test_the_job_page_cancels_and_retries(
    api_url: str, client: httpx.Client, tenant_key: str, cpu_worker: FarmProcess
) -> None:
    stuck = submit(
        client, {"model": "minilm", "device": "gpu", "input": {"items": [{"input": "x"}]}}
    )
    bad = run_job(client, "minilm", b'{"custom_id": "ok", "input": "fine"}\n{not json\n')
    with _logged_in(api_url, tenant_key) as browser:
        page = browser.get(f"/ui/jobs/{stuck['id']}")
        assert 'action="/ui/jobs/' + stuck["id"] + '/cancel"' in page.text
        token = _csrf(page)
        # Without the form's token (a forged form; the cookie alone is not enough): refused.
        for forged in ({}, {"csrf": "0" * 64}):
            refused = browser.post(f"/ui/jobs/{stuck['id']}/cancel", data=forged)
            assert refused.status_code == 403 and "reload the page" in refused.text
        assert client.get(f"/v1/jobs/{stuck['id']}").json()["status"] == "queued"
        cancelled = browser.post(f"/ui/jobs/{stuck['id']}/cancel", data={"csrf": token})
        assert cancelled.status_code == 303
        assert client.get(f"/v1/jobs/{stuck['id']}").json()["status"] == "cancelled"
        # no failed items: the 409, in words, with the way back
        refused = browser.post(f"/ui/jobs/{stuck['id']}/retry", data={"csrf": token})
        assert refused.status_code == 409 and "no failed items" in refused.text, refused.text
        assert "Back to the job" in refused.text

        assert "/retry" in browser.get(f"/ui/jobs/{bad['id']}").text
        assert browser.post(f"/ui/jobs/{bad['id']}/retry").status_code == 403
        retried = browser.post(f"/ui/jobs/{bad['id']}/retry", data={"csrf": token})
        assert retried.status_code == 303
        new_id = retried.headers["location"].rsplit("/", 1)[-1]
        assert client.get(f"/v1/jobs/{new_id}").json()["retry_of"] == bad["id"]
        browser.post("/ui/logout")
        after = browser.post(f"/ui/jobs/{bad['id']}/retry", data={"csrf": token})
        assert after.status_code == 303 and after.headers["location"] == "/ui/login"
    assert client.get("/v1/jobs", params={"limit": 100}).json()["data"][0]["id"] == new_id


def test_the_submit_form_uploads_a_file_and_runs_a_job(
    api_url: str, client: httpx.Client, tenant_key: str, cpu_worker: FarmProcess
) -> None:
    rows = [{"custom_id": f"r{i}", "input": f"sentence number {i}"} for i in range(5)]
    content = "".join(json.dumps(r) + "\n" for r in rows).encode()
    with _logged_in(api_url, tenant_key) as browser:
        form = browser.get("/ui/submit")
        assert form.status_code == 200 and 'enctype="multipart/form-data"' in form.text
        assert '<option value="minilm"' in form.text
        sent = browser.post(
            "/ui/jobs",
            data={
                "csrf": _csrf(form),
                "model": "minilm",
                "params": '{"batch_size": 2}',
                "priority": "high",
            },
            files={"file": ("mine.jsonl", content, "application/jsonl")},
        )
        assert sent.status_code == 303, sent.text
        job_id = sent.headers["location"].rsplit("/", 1)[-1]
        job = wait_done(client, job_id)
        assert job["status"] == "succeeded" and job["counts"]["succeeded"] == 5
        assert job["model"].startswith("minilm") and job["priority"] == "high"
        assert job["params"]["batch_size"] == 2
        assert client.get(f"/v1/files/{job['input_file_id']}/content").content == content
        assert [line["custom_id"] for line in read_lines(client, job["output_file_id"])] == [
            r["custom_id"] for r in rows
        ]
        page = browser.get(f"/ui/jobs/{job_id}").text
        assert f'id="output-file" href="/ui/files/{job["output_file_id"]}"' in page
        # Run again over the file uploaded before, picked from the form's list.
        form = browser.get("/ui/submit")
        assert f'<option value="{job["input_file_id"]}"' in form.text
        again = browser.post(
            "/ui/jobs",
            data={"csrf": _csrf(form), "model": "minilm", "file_id": job["input_file_id"]},
        )
        assert again.status_code == 303, again.text
        rerun = wait_done(client, again.headers["location"].rsplit("/", 1)[-1])
        assert rerun["input_file_id"] == job["input_file_id"] and rerun["priority"] == "normal"


def test_a_refused_submission_leaves_no_upload_behind(
    api_url: str, other_client: httpx.Client, services: dict[str, str]
) -> None:
    from app.services.keys import create_api_key
    from app.services.tenants import create_tenant
    from app.unit_of_work import session_scope

    with session_scope() as session:  # a tenant that may store 4 KiB
        tenant = create_tenant(session, f"ui-{secrets.token_hex(5)}", {"max_storage_bytes": 4096})
        key, tenant_id = create_api_key(session, tenant), tenant.id
    theirs = upload(other_client, b'{"input": "theirs"}\n')
    stored = Path(services["MODELFARM_DATA_DIR"]) / "artifacts" / "tenants" / tenant_id / "files"
    line = b'{"custom_id": "a", "input": "hello"}\n'
    with _logged_in(api_url, key) as browser:
        token = _csrf(browser.get("/ui/submit"))

        def send(status: int, words: str, content: bytes = line, **fields: str) -> httpx.Response:
            data = {"csrf": token, "model": "minilm", "params": "", **fields}
            answer = browser.post(
                "/ui/jobs", data=data, files={"file": ("in.jsonl", content, "application/jsonl")}
            )
            assert answer.status_code == status, answer.text
            assert words in answer.text, answer.text
            return answer

        # Each is refused in words, on the form, keeping what was typed.
        answer = send(404, "no model", model="no-such-model")
        assert 'id="refused"' in answer.text and "no-such-model" in answer.text
        send(
            422,
            "params is not valid JSON: Expecting property name enclosed in double quotes "
            "at line 1, column 2",
            params="{batch_size: 2}",
        )
        send(422, "params must be a JSON object", params="[1, 2]")
        send(422, "priority", priority="urgent")
        send(422, "batch_size", params='{"batch_size": 0}')
        send(403, "reload the page", csrf="")  # a forged form: no token
        # Over the tenant's storage: 413, as POST /v1/files answers.
        send(413, "max_storage_bytes", content=line * 120)
        # Another tenant's file: as if it did not exist, and nothing of it shows.
        stolen = browser.post(
            "/ui/jobs", data={"csrf": token, "model": "minilm", "file_id": theirs["id"]}
        )
        assert stolen.status_code == 404 and "theirs" not in stolen.text
        assert theirs["id"] not in browser.get("/ui/files").text
        assert browser.get(f"/ui/files/{theirs['id']}").status_code == 404
    # Nothing was kept: no file row (nothing counts against the quota), no bytes, no job.
    with httpx.Client(base_url=api_url, headers={"Authorization": f"Bearer {key}"}) as client:
        assert client.get("/v1/files").json()["data"] == []
        assert client.get("/v1/jobs").json()["data"] == []
    assert not stored.exists() or not any(stored.iterdir())


def test_the_files_and_models_pages_list_the_tenants_own(
    api_url: str,
    client: httpx.Client,
    other_client: httpx.Client,
    tenant_key: str,
    cpu_worker: FarmProcess,
) -> None:
    older = upload(client, b'{"input": "older"}\n', name="older.jsonl")
    newer = upload(client, b'{"input": "newer"}\n', name="newer.jsonl")
    junk = upload(client, b"not a model at all", purpose="model", name="junk.skops")
    theirs = upload(other_client, b'{"input": "theirs"}\n', name="theirs.jsonl")
    name = f"junk-{older['id'][-6:]}"
    failed = wait_model(
        client,
        register_model(client, {"name": name, "framework": "sklearn", "file_id": junk["id"]}),
    )
    assert failed["status"] == "failed"
    other_model = f"theirs-{older['id'][-6:]}"
    register_model(
        other_client,
        {
            "name": other_model,
            "framework": "sklearn",
            "file_id": upload(other_client, b"junk", purpose="model")["id"],
        },
    )
    with _logged_in(api_url, tenant_key) as browser:
        page = browser.get("/ui/files").text
        for mine in (older, newer, junk):
            assert f'<a href="/ui/files/{mine["id"]}" download>' in page
        assert theirs["id"] not in page and "theirs.jsonl" not in page
        assert page.index(newer["id"]) < page.index(older["id"])  # newest first
        batch = browser.get("/ui/files", params={"purpose": "batch"}).text
        assert older["id"] in batch and junk["id"] not in batch
        # The next page starts after a file: the ones older than it.
        after = browser.get("/ui/files", params={"after": newer["id"]}).text
        assert older["id"] in after and newer["id"] not in after
        models = browser.get("/ui/models")
        assert models.status_code == 200
        assert 'data-model="minilm"' in models.text
        row = re.search(rf'<tr data-model="{name}".*?</tr>', models.text, re.S)
        assert row, models.text
        assert "s-failed" in row.group(0) and failed["error"]["code"] in row.group(0)
        assert other_model not in models.text
        partial = browser.get("/ui/models?partial=1").text
        assert f'data-model="{name}"' in partial and "<html" not in partial
