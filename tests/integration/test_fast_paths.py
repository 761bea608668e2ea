"""The short paths of step 6, against the real farm: group-committed submissions, a job of a few
inline items planned in its claim's transaction, and ended with its shard in one transaction.

Which transaction wrote a row is PostgreSQL's own `xmin`, so "one transaction" is checked on the
rows themselves, not inferred from timings.
"""

from __future__ import annotations

import threading
from typing import Any

import httpx
import pytest

from tests.helpers import read_lines, submit, wait_done

pytestmark = [pytest.mark.integration, pytest.mark.usefixtures("cpu_worker")]


def _event_transactions(job_id: str) -> dict[str, list[int]]:
    from sqlalchemy import text

    from app.unit_of_work import session_scope

    with session_scope() as session:
        rows = session.execute(
            text("SELECT type, xmin::text FROM job_events WHERE job_id = :id ORDER BY id"),
            {"id": job_id},
        ).all()
    found: dict[str, list[int]] = {}
    for type_, xmin in rows:
        found.setdefault(type_, []).append(int(xmin))
    return found


def test_a_job_of_inline_items_is_planned_in_its_claim_and_ended_with_its_shard(
    client: httpx.Client,
) -> None:
    items = [{"custom_id": f"i{i}", "input": f"sentence number {i}"} for i in range(3)]
    items.append({"custom_id": "bad", "input": 42})  # an error line: both files are written
    job = submit(client, {"model": "minilm", "input": {"items": items}})
    done = wait_done(client, job["id"])
    assert done["status"] == "succeeded", done
    assert done["counts"] == {"total": 4, "succeeded": 3, "failed": 1}
    outputs = read_lines(client, done["output_file_id"])
    assert [o["custom_id"] for o in outputs] == ["i0", "i1", "i2"]
    assert [e["custom_id"] for e in read_lines(client, done["error_file_id"])] == ["bad"]

    xmin = _event_transactions(job["id"])
    # Submitted in one transaction; claimed, planned and started in the next; ended in a third.
    assert xmin["queued"] == xmin["dispatched"]
    assert xmin["running"] == xmin["planned"] == xmin["shard_started"]
    assert xmin["shard_succeeded"] == xmin["succeeded"]
    assert len({xmin["queued"][0], xmin["running"][0], xmin["succeeded"][0]}) == 3

    from sqlalchemy import text

    from app.unit_of_work import session_scope

    with session_scope() as session:
        counted = session.execute(
            text(
                "SELECT f.id, f.items FROM files f JOIN jobs j ON f.id IN "
                "(j.input_file_id, j.output_file_id, j.error_file_id) WHERE j.id = :id"
            ),
            {"id": job["id"]},
        ).all()
    items_by_file = dict(counted)
    assert items_by_file[done["input_file_id"]] == 4
    assert items_by_file[done["output_file_id"]] == 3
    assert items_by_file[done["error_file_id"]] == 1


def test_an_uploaded_file_is_still_read_to_be_planned(client: httpx.Client) -> None:
    from tests.helpers import jsonl, upload

    file = upload(client, jsonl([{"custom_id": "a", "input": "one"}, {"input": "two"}]))
    job = submit(client, {"model": "minilm", "input": {"file_id": file["id"]}})
    done = wait_done(client, job["id"])
    assert done["status"] == "succeeded" and done["counts"]["succeeded"] == 2
    xmin = _event_transactions(job["id"])
    assert xmin["running"] != xmin["planned"]  # claimed, then planned once its input was read


def test_submissions_that_arrive_together_are_committed_together(
    client: httpx.Client, api_url: str
) -> None:
    """Many clients at once: every one is answered 202 with a job that exists and runs, and
    some of them shared a commit (the point of group commit)."""
    answers: list[dict[str, Any]] = []
    failures: list[BaseException] = []
    start = threading.Barrier(16)
    headers = dict(client.headers)

    def one(i: int) -> None:
        try:
            with httpx.Client(base_url=api_url, headers=headers, timeout=60) as c:
                start.wait()
                for k in range(5):
                    body = {"model": "minilm", "input": {"items": [{"input": f"t{i}-{k}"}]}}
                    answers.append(submit(c, body))
        except BaseException as exc:  # reported below
            failures.append(exc)

    threads = [threading.Thread(target=one, args=(i,)) for i in range(16)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert failures == []
    assert len(answers) == 80 and len({a["id"] for a in answers}) == 80
    transactions = {_event_transactions(a["id"])["queued"][0] for a in answers}
    assert len(transactions) < 80  # at least two jobs shared one commit
    for answer in answers:
        assert wait_done(client, answer["id"])["status"] == "succeeded"


def test_a_row_the_database_refuses_fails_only_its_own_submission(
    services: dict[str, str], client: httpx.Client
) -> None:
    """A batch PostgreSQL refuses is written again one submission at a time: the others land."""
    from sqlalchemy.exc import IntegrityError

    from app.api.submissions import write_batch
    from app.models import Tenant
    from app.schemas.jobs import JobCreate
    from app.services.jobs import prepare_submission
    from app.services.tenants import authenticate
    from app.unit_of_work import session_scope

    key = client.headers["Authorization"].split()[1]
    with session_scope() as session:
        tenant = authenticate(session, key)
        assert isinstance(tenant, Tenant)

    def prepared(text: str) -> Any:
        with session_scope() as session:
            body = JobCreate.model_validate(
                {"model": "minilm", "input": {"items": [{"input": text}]}}
            )
            return prepare_submission(session, tenant, body)

    good, bad, other = prepared("good"), prepared("bad"), prepared("other")
    # The bad one names an input file that is not there: its job row breaks a foreign key.
    bad.job.input_file_id = "file_missing"
    bad.rows[:] = [
        (cls, {**row, "input_file_id": "file_missing"} if "input_file_id" in row else row)
        for cls, row in bad.rows
        if cls.__name__ != "File"
    ]
    outcomes = write_batch([good, bad, other])
    assert outcomes[0] is None and outcomes[2] is None
    assert isinstance(outcomes[1], IntegrityError)
    for submission in (good, other):
        assert wait_done(client, submission.job.id)["status"] == "succeeded"
    missing = client.get(f"/v1/jobs/{bad.job.id}")
    assert missing.status_code == 404


def test_submissions_refused_by_their_checks_fail_alone_under_load(
    client: httpx.Client, api_url: str
) -> None:
    """Checks run in the committer thread, a batch at a time: one submission's refusal (an
    unknown model, too many items) is its own answer, in the error shape, and the submissions
    that arrived with it are written."""
    from app.config import get_settings

    too_many = [{"input": "x"}] * (get_settings().max_inline_items + 1)
    bodies: list[tuple[str, dict[str, Any]]] = []
    for i in range(24):
        if i % 3 == 1:
            bodies.append(
                ("no_model", {"model": "no-such-model", "input": {"items": [{"input": "x"}]}})
            )
        elif i % 3 == 2:
            bodies.append(("too_many", {"model": "minilm", "input": {"items": too_many}}))
        else:
            bodies.append(("good", {"model": "minilm", "input": {"items": [{"input": f"g{i}"}]}}))
    answers: list[tuple[str, httpx.Response]] = []
    failures: list[BaseException] = []
    start = threading.Barrier(8)
    headers = dict(client.headers)

    def one(mine: list[tuple[str, dict[str, Any]]]) -> None:
        try:
            with httpx.Client(base_url=api_url, headers=headers, timeout=60) as c:
                start.wait()
                for kind, body in mine:
                    answers.append((kind, c.post("/v1/jobs", json=body)))
        except BaseException as exc:  # reported below
            failures.append(exc)

    threads = [threading.Thread(target=one, args=(bodies[i::8],)) for i in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert failures == []
    assert len(answers) == 24
    for kind, response in answers:
        if kind == "good":
            assert response.status_code == 202, response.text
            assert client.get(f"/v1/jobs/{response.json()['id']}").status_code == 200
        elif kind == "no_model":
            assert response.status_code == 404, response.text
            assert set(response.json()) == {"error"}
            assert set(response.json()["error"]) >= {"code", "message"}
        else:
            assert response.status_code == 422, response.text
            assert response.json()["error"]["code"] == "too_many_items"
    for kind, response in answers:
        if kind == "good":
            assert wait_done(client, response.json()["id"])["status"] == "succeeded"
