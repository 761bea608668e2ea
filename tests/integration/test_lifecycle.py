"""Retry of failed items, deadlines, and the event log of a sharded job."""

from __future__ import annotations

import json
import time
from datetime import UTC, datetime
from pathlib import Path

import httpx
import pytest

from tests.helpers import (
    all_pages,
    api_process,
    assert_error,
    jsonl,
    read_lines,
    run_job,
    submit,
    upload,
    wait_done,
)

pytestmark = [pytest.mark.integration, pytest.mark.usefixtures("cpu_worker", "sweeper")]


def _mixed_input(n: int) -> bytes:
    lines = []
    for i in range(n):
        value = f"sentence {i}" if i % 3 else 1234  # every third item has the wrong type
        lines.append(json.dumps({"custom_id": i, "input": value}))
    return ("\n".join(lines) + "\n").encode()


def test_retry_runs_only_the_failed_items(client: httpx.Client) -> None:
    first = run_job(client, "minilm", _mixed_input(30))
    assert first["counts"] == {"total": 30, "succeeded": 20, "failed": 10}
    response = client.post(f"/v1/jobs/{first['id']}/retry")
    assert response.status_code == 202, response.text
    # The request reads no file: the worker that plans the retry makes its input.
    assert response.json()["input_file_id"] is None
    retry = wait_done(client, response.json()["id"])
    assert retry["retry_of"] == first["id"] and retry["model"] == first["model"]
    made = client.get(f"/v1/files/{retry['input_file_id']}/content").text.splitlines()
    assert len(made) == 10 and all(json.loads(line)["custom_id"] % 3 == 0 for line in made)
    assert retry["counts"]["total"] == 10  # just the failed ones
    errors = read_lines(client, retry["error_file_id"])
    assert [e["custom_id"] for e in errors] == list(range(0, 30, 3))
    # Nothing failed in a clean job: nothing to retry.
    clean = run_job(client, "minilm", [{"custom_id": 1, "input": "fine"}])
    assert_error(client.post(f"/v1/jobs/{clean['id']}/retry"), 409, "nothing_to_retry")


def test_a_retrys_error_lines_name_the_original_files_lines(client: httpx.Client) -> None:
    # 700 lines with a blank one and a broken one among them: every third item fails (a
    # number, not text), so the retry runs about 233 items, in two shards of 200 here.
    lines: list[str] = []
    failing: list[int] = []
    for i in range(700):
        if i == 4:
            lines.append("")  # not an item: the numbers after it are not item indexes
        if i == 10:
            lines.append('{"custom_id": "broken", "input": ')
            failing.append(broken_line := len(lines))
            continue
        lines.append(json.dumps({"custom_id": i, "input": f"sentence {i}" if i % 3 else i}))
        if i % 3 == 0:
            failing.append(len(lines))
    first = run_job(client, "minilm", ("\n".join(lines) + "\n").encode())
    first_errors = read_lines(client, first["error_file_id"])
    assert [e["line"] for e in first_errors] == failing

    job = first
    for _ in range(2):  # a retry, then a retry of the retry: still the first file's numbers
        response = client.post(f"/v1/jobs/{job['id']}/retry")
        assert response.status_code == 202, response.text
        job = wait_done(client, response.json()["id"])
        assert job["counts"]["total"] == len(failing)
        errors = read_lines(client, job["error_file_id"])
        assert [e["line"] for e in errors] == failing
        assert [e["custom_id"] for e in errors] == [e["custom_id"] for e in first_errors]
        broken = next(e for e in errors if e["error"]["code"] == "invalid_json")
        # The message names the line in words too, and the same one.
        assert broken["error"]["message"].startswith(f"line {broken_line}, column "), broken


def test_retry_of_an_unfinished_job_is_409(client: httpx.Client) -> None:
    job = submit(
        client,
        {
            "model": "minilm",
            "device": "gpu",  # no GPU worker: stays queued
            "input": {"items": [{"input": "x"}]},
        },
    )
    assert_error(client.post(f"/v1/jobs/{job['id']}/retry"), 409, "not_retryable")
    client.post(f"/v1/jobs/{job['id']}/cancel")
    assert_error(client.post("/v1/jobs/job_nope/retry"), 404)


def test_a_queued_job_past_its_deadline_is_cancelled(client: httpx.Client) -> None:
    job = submit(
        client,
        {
            "model": "minilm",
            "device": "gpu",
            "deadline_seconds": 0.5,
            "input": {"items": [{"input": "x"}]},
        },
    )
    assert job["deadline_at"] is not None
    done = wait_done(client, job["id"], timeout=30)
    assert done["status"] == "cancelled"
    assert done["error"]["code"] == "deadline_exceeded"


def test_a_running_job_past_its_deadline_keeps_its_finished_items(client: httpx.Client) -> None:
    # The worker's model loaded first, so the deadline times items, not the model's loading
    # (its first export takes seconds on a loaded machine). 40,000 long items outlast 8 s on
    # any machine (two idle cores run about 400 a second; 4,000 no longer did), and 8 s leaves
    # a loaded machine time to finish the first chunks, which the job keeps. The deadline
    # stops the work, so the size costs only the upload.
    assert run_job(client, "minilm", [{"input": "warm"}])["status"] == "succeeded"
    total = 40_000
    rows = [{"custom_id": i, "input": "a sentence to embed " * 20} for i in range(total)]
    job = run_job(client, "minilm", rows, deadline_seconds=8)
    assert job["status"] == "cancelled" and job["error"]["code"] == "deadline_exceeded"
    done = read_lines(client, job["output_file_id"])
    assert 0 < len(done) < total and len(done) == job["counts"]["succeeded"]
    assert [d["custom_id"] for d in done] == list(range(len(done)))


def test_bad_deadline_is_422(client: httpx.Client) -> None:
    for value in (0, -1, "soon", 10**9):
        body = {"model": "minilm", "deadline_seconds": value, "input": {"items": [{"input": "x"}]}}
        assert_error(client.post("/v1/jobs", json=body), 422)


def test_a_job_whose_message_was_never_published_still_runs(
    client: httpx.Client, services: dict[str, str]
) -> None:
    """The API commits before it publishes; a job left without a message is the sweeper's."""
    from sqlalchemy import update

    from app.models import Job
    from app.unit_of_work import session_scope

    file = upload(client, b'{"custom_id": "a", "input": "hello"}\n')
    job = submit(client, {"model": "minilm", "device": "gpu", "input": {"file_id": file["id"]}})
    # Simulate a publish that never happened: a cpu job, queued, with no dispatch time and no
    # message anywhere (its real message went to the gpu queue, which nobody consumes).
    with session_scope() as session:
        session.execute(
            update(Job)
            .where(Job.id == job["id"])
            .values(queue="cpu", device="cpu", dispatched_at=None)
        )
    done = wait_done(client, job["id"], timeout=60)
    assert done["status"] == "succeeded"
    events = [e["type"] for e in all_pages(client, f"/v1/jobs/{job['id']}/events")]
    assert "redispatched" in events


def test_only_one_sweeper_acts(sweeper: object, services: dict[str, str]) -> None:
    """The running sweeper holds the advisory lock, so a second one cannot take it."""
    from sqlalchemy import text

    from app.db import get_engine
    from app.sweeper import SWEEPER_LOCK

    lock = text("SELECT pg_try_advisory_lock(:k)")
    with get_engine().connect() as conn:
        for _ in range(50):  # the sweeper takes the lock on its first round, just after start
            if conn.execute(lock, {"k": SWEEPER_LOCK}).scalar() is False:
                return
            conn.execute(text("SELECT pg_advisory_unlock(:k)"), {"k": SWEEPER_LOCK})
            time.sleep(0.2)
    raise AssertionError("the sweeper never held its lock")


def test_every_api_process_listens_for_job_ends_from_its_start(
    services: dict[str, str], tmp_path: Path
) -> None:
    """Each process of a new `modelfarm api` LISTENs before any `Prefer: wait` asks: a first
    waiter whose job ended while the listener was still connecting would wait for the poll."""
    import psycopg

    from app.services.jobs import JOB_ENDED_CHANNEL

    db_url = services["MODELFARM_DATABASE_URL"].replace("postgresql+psycopg://", "postgresql://")

    def listeners() -> set[str]:
        with psycopg.connect(db_url, autocommit=True) as conn:
            rows = conn.execute(
                "SELECT application_name FROM pg_stat_activity WHERE datname = current_database()"
                " AND application_name LIKE 'modelfarm job-ends %%' AND query = %s",
                (f"LISTEN {JOB_ENDED_CHANNEL}",),
            ).fetchall()
        return {name for (name,) in rows}

    before = listeners()
    with api_process({**services, "MODELFARM_API_WORKERS": "2"}, tmp_path / "api.log"):
        deadline = time.monotonic() + 30
        while len(listeners() - before) < 2:
            assert time.monotonic() < deadline, (before, listeners())
            time.sleep(0.1)


def test_prefer_wait_answers_when_the_job_ends_not_at_the_next_poll(
    client: httpx.Client,
) -> None:
    """The waiting request is woken by the job's end (NOTIFY). Its fallback re-read runs once
    a second, so its answers would lag `finished_at` by anything up to a second, evenly: five
    answers all within 0.5 s, four of them within 150 ms, come from polling about once in a
    thousand tries. One slower answer of a loaded machine (the worker and the API share its
    cores) is allowed; a first, untimed wait starts the API process's listener."""
    rows = [{"custom_id": i, "input": f"sentence number {i} " * 8} for i in range(150)]
    lags = []
    for _ in range(6):
        job = submit(client, {"model": "minilm", "input": {"items": rows}})
        done = client.get(f"/v1/jobs/{job['id']}", headers={"Prefer": "wait=60"})
        answered = datetime.now(UTC)
        body = done.json()
        assert body["status"] == "succeeded", body
        assert done.headers["Preference-Applied"] == "wait=60"
        lags.append((answered - datetime.fromisoformat(body["finished_at"])).total_seconds())
    timed = sorted(lags[1:])
    assert timed[-1] < 0.5 and timed[-2] < 0.15, lags


def test_a_finished_job_can_be_deleted_with_its_results(
    client: httpx.Client, other_client: httpx.Client, services: dict[str, str]
) -> None:
    """DELETE /v1/jobs/{id}: 204 for a finished job, whose results, events and files go with
    it; 409 while it is not finished; 404 for another tenant. The input file stays."""
    from pathlib import Path

    file = upload(client, b'{"custom_id": "a", "input": "hello"}\n{"input": NaN}\n')
    job = wait_done(
        client, submit(client, {"model": "minilm", "input": {"file_id": file["id"]}})["id"]
    )
    assert job["status"] == "succeeded" and job["error_file_id"] is not None
    tenant_dirs = Path(services["MODELFARM_DATA_DIR"], "artifacts", "tenants")
    (job_dir,) = tenant_dirs.glob(f"*/jobs/{job['id']}")
    assert any(p.is_file() for p in job_dir.rglob("*"))
    another = submit(client, {"model": "minilm", "input": {"file_id": file["id"]}})
    assert_error(other_client.delete(f"/v1/jobs/{job['id']}"), 404, "not_found")

    gone = client.delete(f"/v1/jobs/{job['id']}")
    assert gone.status_code == 204 and gone.content == b""
    assert_error(client.get(f"/v1/jobs/{job['id']}"), 404, "not_found")
    assert_error(client.get(f"/v1/jobs/{job['id']}/events"), 404, "not_found")
    for file_id in (job["output_file_id"], job["error_file_id"]):
        assert_error(client.get(f"/v1/files/{file_id}/content"), 404, "not_found")
    assert not job_dir.exists()
    assert client.get(f"/v1/files/{file['id']}").status_code == 200  # the input stays
    assert_error(client.delete(f"/v1/jobs/{job['id']}"), 404, "not_found")

    queued = submit(
        client, {"model": "minilm", "device": "gpu", "input": {"items": [{"input": "x"}]}}
    )  # no GPU worker runs here: it stays queued
    assert_error(client.delete(f"/v1/jobs/{queued['id']}"), 409, "job_not_finished")
    assert client.get(f"/v1/jobs/{queued['id']}").json()["status"] == "queued"
    client.post(f"/v1/jobs/{queued['id']}/cancel")
    assert client.delete(f"/v1/jobs/{queued['id']}").status_code == 204
    assert wait_done(client, another["id"])["status"] == "succeeded"  # its input was kept


def test_a_file_can_be_deleted_once_no_running_job_reads_it(
    client: httpx.Client, other_client: httpx.Client, services: dict[str, str]
) -> None:
    """DELETE /v1/files/{id}: 204 and the bytes are gone; 409 `file_in_use` while a job that has
    not ended reads it; finished jobs keep their record without the file; 404 for others."""
    from pathlib import Path

    file = upload(client, b'{"custom_id": "a", "input": "hello"}\n')
    artifacts = Path(services["MODELFARM_DATA_DIR"], "artifacts")
    (stored,) = artifacts.glob(f"tenants/*/files/{file['id']}")
    waiting = submit(
        client, {"model": "minilm", "device": "gpu", "input": {"file_id": file["id"]}}
    )  # no GPU worker runs here: it stays queued, and needs its input
    assert_error(client.delete(f"/v1/files/{file['id']}"), 409, "file_in_use")
    assert_error(other_client.delete(f"/v1/files/{file['id']}"), 404, "not_found")
    client.post(f"/v1/jobs/{waiting['id']}/cancel")
    done = run_job(client, "minilm", [{"custom_id": "b", "input": "x"}])

    assert client.delete(f"/v1/files/{file['id']}").status_code == 204
    assert not stored.exists()
    assert_error(client.get(f"/v1/files/{file['id']}"), 404, "not_found")
    assert client.get(f"/v1/jobs/{waiting['id']}").json()["input_file_id"] is None
    assert client.delete(f"/v1/files/{done['output_file_id']}").status_code == 204
    after = client.get(f"/v1/jobs/{done['id']}").json()
    assert after["status"] == "succeeded" and after["output_file_id"] is None
    assert_error(client.delete(f"/v1/files/{file['id']}"), 404, "not_found")


def test_results_older_than_their_ttl_are_removed_by_the_sweeper(
    client: httpx.Client, services: dict[str, str]
) -> None:
    """RESULT_TTL_DAYS (30): the running sweeper removes a job that ended longer ago than that,
    with its events, shards, webhook deliveries (and their attempts) and result files, and
    leaves a recent one alone."""
    from datetime import timedelta
    from pathlib import Path

    from sqlalchemy import func, select, update

    from app.models import Delivery, DeliveryAttempt, Job, JobEvent, JobShard
    from app.unit_of_work import session_scope

    old = run_job(client, "minilm", [{"custom_id": "a", "input": "old news"}])
    recent = run_job(client, "minilm", [{"custom_id": "b", "input": "fresh news"}])
    (old_dir,) = Path(services["MODELFARM_DATA_DIR"], "artifacts").glob(
        f"tenants/*/jobs/{old['id']}"
    )
    long_ago = datetime.now(UTC) - timedelta(days=31)
    with session_scope() as session:
        session.execute(update(Job).where(Job.id == old["id"]).values(finished_at=long_ago))
        # A delivery the job's webhook made when it ended, answered at once.
        tenant_id = session.get_one(Job, old["id"]).tenant_id
        delivery = Delivery(
            job_id=old["id"], tenant_id=tenant_id, event="job.succeeded", url="https://x.test/",
            body="{}", status="succeeded", attempt_count=1, max_attempts=8, created_at=long_ago,
        )  # fmt: skip
        session.add(delivery)
        session.flush()
        session.add(DeliveryAttempt(delivery_id=delivery.id, number=1, started_at=long_ago))
        delivery_id = delivery.id

    def rows_left() -> dict[str, int]:
        with session_scope() as session:
            return {
                table.__name__: session.scalar(select(func.count()).where(where)) or 0
                for table, where in [
                    (JobEvent, JobEvent.job_id == old["id"]),
                    (JobShard, JobShard.job_id == old["id"]),
                    (Delivery, Delivery.job_id == old["id"]),
                    (DeliveryAttempt, DeliveryAttempt.delivery_id == delivery_id),
                ]
            }

    assert all(rows_left().values()), rows_left()  # what the removal must take with it
    deadline = time.monotonic() + 30
    while client.get(f"/v1/jobs/{old['id']}").status_code != 404:
        assert time.monotonic() < deadline, "the sweeper did not remove the expired job"
        time.sleep(0.3)
    assert_error(client.get(f"/v1/files/{old['output_file_id']}"), 404, "not_found")
    assert not old_dir.exists()
    assert rows_left() == dict.fromkeys(["JobEvent", "JobShard", "Delivery", "DeliveryAttempt"], 0)
    assert client.get(f"/v1/jobs/{recent['id']}").json()["status"] == "succeeded"
    assert read_lines(client, recent["output_file_id"])[0]["custom_id"] == "b"


def test_uploads_older_than_their_ttl_are_removed_once_no_job_reads_them(
    client: httpx.Client, services: dict[str, str]
) -> None:
    """An upload is kept RESULT_TTL_DAYS after it was uploaded and after the last job that read
    it ended; the sweeper removes it after both, bytes and row, and keeps one still in use."""
    from datetime import timedelta
    from pathlib import Path

    from sqlalchemy import update

    from app.models import File, Job
    from app.unit_of_work import session_scope

    rows = [{"custom_id": "a", "input": "kept a while"}]
    stale = upload(client, jsonl(rows))
    reused = upload(client, jsonl(rows))
    job = run_job(client, "minilm", rows)  # inline items: its input file is the farm's own
    read_recently = submit(client, {"model": "minilm", "input": {"file_id": reused["id"]}})
    wait_done(client, read_recently["id"])
    month_ago = datetime.now(UTC) - timedelta(days=31)
    with session_scope() as session:
        ids = [stale["id"], reused["id"], job["input_file_id"]]
        session.execute(update(File).where(File.id.in_(ids)).values(created_at=month_ago))
        session.execute(update(Job).where(Job.id == job["id"]).values(finished_at=month_ago))
    (stale_path,) = Path(services["MODELFARM_DATA_DIR"], "artifacts").glob(
        f"tenants/*/files/{stale['id']}"
    )
    deadline = time.monotonic() + 30
    while client.get(f"/v1/files/{stale['id']}").status_code != 404:
        assert time.monotonic() < deadline, "the sweeper did not remove the expired upload"
        time.sleep(0.3)
    assert not stale_path.exists()
    # The job's own inline input went with it (its job ended a month ago too) ...
    assert client.get(f"/v1/files/{job['input_file_id']}").status_code == 404
    # ... but an old upload that a job read yesterday, say, is kept.
    assert client.get(f"/v1/files/{reused['id']}").status_code == 200


def test_files_a_waiting_retry_will_read_cannot_be_deleted(client: httpx.Client) -> None:
    """A retry that has not made its input yet reads its first job's input and error files:
    neither they nor that job can be deleted until it has (409), then both can (204)."""
    from sqlalchemy import update

    from app.models import Job
    from app.unit_of_work import session_scope

    first = run_job(client, "minilm", _mixed_input(6))
    assert first["error_file_id"] is not None
    retry = submit(
        client, {"model": "minilm", "device": "gpu", "input": {"items": [{"input": "x"}]}}
    )
    with session_scope() as session:  # a retry waiting for its planner (no GPU worker here)
        session.execute(
            update(Job)
            .where(Job.id == retry["id"])
            .values(retry_of=first["id"], input_file_id=None)
        )
    assert_error(client.delete(f"/v1/jobs/{first['id']}"), 409, "job_not_finished")
    for file_id in (first["input_file_id"], first["error_file_id"]):
        assert_error(client.delete(f"/v1/files/{file_id}"), 409, "file_in_use")
    client.post(f"/v1/jobs/{retry['id']}/cancel")
    assert client.delete(f"/v1/files/{first['error_file_id']}").status_code == 204
    assert client.delete(f"/v1/jobs/{first['id']}").status_code == 204
