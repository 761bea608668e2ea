"""The /ui dashboard in a real browser: Debian's Chromium driven by Playwright.

Skipped, saying why, where Chromium or Playwright is missing (`apt-get install chromium`,
`pip install playwright`; never `playwright install`, which downloads a browser).
"""

from __future__ import annotations

import json
import os
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.helpers import FarmProcess, jsonl, submit, upload, wait_done

pytestmark = [pytest.mark.e2e, pytest.mark.slow]

CHROMIUM = os.environ.get("MODELFARM_TEST_CHROMIUM") or next(
    (p for p in map(shutil.which, ("chromium", "chromium-browser")) if p), None
)
# Long enough that the page, which polls every 2 s, sees the job running: several seconds
# on two idle cores (1,000 of these took under two seconds there).
ITEMS = 3000
SENTENCE = "a sentence long enough that the model spends some time on every item " * 4


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    if CHROMIUM is None:
        pytest.skip("no Chromium found (apt-get install chromium, or set MODELFARM_TEST_CHROMIUM)")
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        pytest.skip("Playwright is not installed (pip install playwright)")
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(
            executable_path=CHROMIUM, args=["--no-sandbox", "--disable-dev-shm-usage"]
        )
        yield browser
        browser.close()


def _log_in(page: Any, api_url: str, key: str) -> None:
    page.goto(f"{api_url}/ui")
    assert page.url.endswith("/ui/login")  # not logged in: sent to the form
    page.fill("#key", key)
    page.click("button[type=submit]")
    page.wait_for_url(f"{api_url}/ui")


def test_a_wrong_key_is_refused_and_the_key_stays_out_of_urls(
    browser: Any, api_url: str, tenant_key: str
) -> None:
    context = browser.new_context()
    page = context.new_page()
    page.goto(f"{api_url}/ui/login")
    page.fill("#key", "mf_not_a_key")
    page.click("button[type=submit]")
    assert "not valid" in page.text_content(".alert")
    _log_in(page, api_url, tenant_key)
    cookie = next(c for c in context.cookies() if c["name"] == "modelfarm_ui_key")
    assert cookie["httpOnly"] and cookie["sameSite"] == "Strict"
    assert tenant_key not in page.url
    assert page.evaluate("document.cookie") == ""  # out of reach of scripts
    context.close()


def test_the_dashboard_shows_a_running_job_then_its_end(
    browser: Any,
    api_url: str,
    client: httpx.Client,
    tenant_key: str,
    cpu_worker: FarmProcess,
    tmp_path: Path,
) -> None:
    rows = [{"custom_id": str(i), "input": f"{i} {SENTENCE}"} for i in range(ITEMS)]
    rows[7]["input"] = 12  # not text: one error line
    file = upload(client, jsonl(rows))

    context = browser.new_context(viewport={"width": 1366, "height": 800})
    page = context.new_page()
    # Logged in before the job is sent: the browser's start is not part of the job's run.
    _log_in(page, api_url, tenant_key)
    job = submit(client, {"model": "minilm", "input": {"file_id": file["id"]}})
    page.goto(f"{api_url}/ui")
    row = page.locator(f"tr[data-job='{job['id']}']")
    assert row.count() == 1
    row.locator("a").click()
    page.wait_for_url(f"{api_url}/ui/jobs/{job['id']}")

    # Polling moves the page on its own: first the job running with part of its items done ...
    page.wait_for_function(
        """() => {
            const bar = document.querySelector('#live .big-bar [role=progressbar]');
            const status = document.querySelector('#live .head .status');
            const done = bar ? Number(bar.getAttribute('aria-valuenow')) : 0;
            return status && status.textContent === 'running' && done > 0 && done < 100;
        }""",
        timeout=120_000,
        polling=100,
    )
    page.screenshot(path=str(tmp_path / "running.png"), full_page=True)
    # ... then its end, with the counts and the error line.
    page.wait_for_selector("#live [data-final] .head .s-succeeded", timeout=180_000)
    page.screenshot(path=str(tmp_path / "done.png"), full_page=True)
    assert page.text_content("#live .big-bar .pct") == "100%"
    assert page.locator("#live table.errors tbody tr").count() == 1
    assert "This job has no webhook." in page.text_content("#live")
    assert wait_done(client, job["id"])["counts"] == {
        "total": ITEMS,
        "succeeded": ITEMS - 1,
        "failed": 1,
    }

    page.goto(f"{api_url}/ui/pools")
    assert int(page.text_content("tr[data-pool='cpu'] td:nth-child(2)").split()[0]) >= 1
    if os.environ.get("MODELFARM_TEST_SCREENSHOTS"):
        shots = Path(os.environ["MODELFARM_TEST_SCREENSHOTS"])
        shots.mkdir(parents=True, exist_ok=True)
        for name in ("running.png", "done.png"):
            shutil.copy(tmp_path / name, shots / name)
        page.screenshot(path=str(shots / "pools.png"), full_page=True)
        page.goto(f"{api_url}/ui")
        page.screenshot(path=str(shots / "jobs.png"), full_page=True)
    context.close()


def test_a_job_from_upload_to_download_in_the_browser(
    browser: Any,
    api_url: str,
    client: httpx.Client,
    tenant_key: str,
    cpu_worker: FarmProcess,
    tmp_path: Path,
) -> None:
    rows = [{"custom_id": f"doc-{i}", "input": f"{i} {SENTENCE}"} for i in range(40)]
    context = browser.new_context(viewport={"width": 1366, "height": 900}, accept_downloads=True)
    page = context.new_page()
    _log_in(page, api_url, tenant_key)
    page.click("nav >> text=New job")
    page.wait_for_url(f"{api_url}/ui/submit")
    page.set_input_files(
        "#file",
        files=[{"name": "small.jsonl", "mimeType": "application/jsonl", "buffer": jsonl(rows)}],
    )
    page.select_option("#model", "minilm")
    page.fill("#params", '{"batch_size": 8}')
    page.select_option("#priority", "high")
    page.click("#submit button[type=submit]")
    page.wait_for_url(f"{api_url}/ui/jobs/job_*")
    job_id = page.url.rsplit("/", 1)[-1]

    # The page follows the job to its end by itself, then offers its output.
    page.wait_for_selector("#live [data-final] .head .s-succeeded", timeout=120_000)
    assert page.text_content("#live .big-bar .pct") == "100%"
    job = client.get(f"/v1/jobs/{job_id}").json()
    assert job["priority"] == "high" and job["params"]["batch_size"] == 8
    with page.expect_download() as download:
        page.click("#output-file")
    saved = tmp_path / "output.jsonl"
    download.value.save_as(saved)
    lines = [json.loads(line) for line in saved.read_text().splitlines()]
    assert [line["custom_id"] for line in lines] == [r["custom_id"] for r in rows]
    assert all(len(line["output"]) == 384 for line in lines)
    page.screenshot(path=str(tmp_path / "submitted.png"), full_page=True)

    # The upload and the job's output are in the files list, each id a download link ...
    page.click("nav >> text=Files")
    page.wait_for_url(f"{api_url}/ui/files")
    for file_id in (job["input_file_id"], job["output_file_id"]):
        assert page.locator(f"tr[data-file='{file_id}'] a[download]").count() == 1
    assert "small.jsonl" in page.text_content(f"tr[data-file='{job['input_file_id']}']")
    # ... and the model in the models list, ready.
    page.click("nav >> text=Models")
    page.wait_for_url(f"{api_url}/ui/models")
    assert page.text_content("tr[data-model='minilm'] .status") == "ready"
    if os.environ.get("MODELFARM_TEST_SCREENSHOTS"):
        shots = Path(os.environ["MODELFARM_TEST_SCREENSHOTS"])
        shots.mkdir(parents=True, exist_ok=True)
        shutil.copy(tmp_path / "submitted.png", shots / "submitted.png")
        page.screenshot(path=str(shots / "models.png"), full_page=True)
        page.goto(f"{api_url}/ui/submit")
        page.screenshot(path=str(shots / "submit.png"), full_page=True)
    context.close()
