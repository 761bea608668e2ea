"""A synchronous OpenAI request: a job of one request line, submitted, waited for and answered
from its line (embeddings, rerank, chat completions, completions), never run in the API
process."""

from __future__ import annotations

import time
from typing import Any

from fastapi.responses import JSONResponse
from starlette.concurrency import run_in_threadpool

from app.api import waits
from app.api.errors import openai_error
from app.api.submissions import group_commit
from app.models import Job, Tenant
from app.services import jobs as job_service
from app.services import openai as service
from app.unit_of_work import session_scope

#: how long a synchronous request waits for its job (a queue full of batches may hold it)
WAIT_SECONDS = 300.0


def load(tenant: Tenant, job_id: str) -> Job:
    with session_scope() as session:
        return job_service.get_job(session, tenant, job_id)


def _answer(tenant: Tenant, job: Job) -> tuple[int, dict[str, Any]]:
    with session_scope() as session:
        return service.sync_answer(session, tenant, job)


async def answer(tenant: Tenant, job: Job) -> tuple[int, dict[str, Any]]:
    """(HTTP status, body) of the ended job's one line."""
    return await run_in_threadpool(_answer, tenant, job)


def timed_out(job_id: str) -> JSONResponse:
    message = f"no worker answered within {WAIT_SECONDS:g} s (job {job_id})"
    return openai_error(503, "timeout", message, headers={"Retry-After": "10"})


async def run(tenant: Tenant, submission: job_service.Submission) -> Job:
    """Submit the job and wait for its end (or WAIT_SECONDS), woken by PostgreSQL's
    notification as `Prefer: wait` is (app/api/waits.py)."""
    job_id = submission.job.id
    deadline = time.monotonic() + WAIT_SECONDS
    # Registered before the submission: an end that comes before the first read still wakes.
    async with waits.job_end(job_id) as ended:
        await run_in_threadpool(group_commit.submit, submission)
        job = await run_in_threadpool(load, tenant, job_id)
        while not job.is_terminal and time.monotonic() < deadline:
            await waits.until(ended, deadline)
            job = await run_in_threadpool(load, tenant, job_id)
    return job


async def respond(tenant: Tenant, submission: job_service.Submission, model: str) -> JSONResponse:
    """The ended job's answer as the request's, `model` as the client named it."""
    job = await run(tenant, submission)
    if not job.is_terminal:
        return timed_out(job.id)
    status, body = await answer(tenant, job)
    if status == 200:
        body["model"] = model  # the name asked for, as OpenAI answers
    return JSONResponse(body, status_code=status)


def prepare(tenant: Tenant, model: str, endpoint: str, body: dict[str, Any]) -> Any:
    with session_scope() as session:
        return service.prepare_sync(session, tenant, model, endpoint, body)


async def request(tenant: Tenant, model: str, endpoint: str, body: dict[str, Any]) -> JSONResponse:
    """Submit `body` to `endpoint` as a one-line job and answer with its line's response."""
    submission = await run_in_threadpool(prepare, tenant, model, endpoint, body)
    return await respond(tenant, submission, model)
