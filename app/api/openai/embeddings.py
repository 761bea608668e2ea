"""/openai/v1/embeddings and /openai/v1/models.

An embeddings request is answered by the workers, never by a model in the API process: it is
submitted as a job of one request line (the batch format), and the answer waits for that job's
end as `Prefer: wait` does (woken by PostgreSQL's notification, app/api/waits.py).
"""

from __future__ import annotations

import time

from fastapi import APIRouter
from fastapi.responses import JSONResponse
from starlette.concurrency import run_in_threadpool

from app.api import waits
from app.api.deps import SessionDep, SettingsDep, TenantDep
from app.api.openai.errors import OpenAIRoute, openai_error
from app.api.submissions import group_commit
from app.db import session_scope
from app.models import Job, Tenant
from app.schemas.openai import EmbeddingCreate, OpenAIModel, OpenAIModelList
from app.services import jobs as job_service
from app.services import openai as service
from app.services import openai_models

router = APIRouter(route_class=OpenAIRoute)

#: how long an embeddings request waits for its job (a queue full of batches may hold it)
WAIT_SECONDS = 300.0


def _prepare(tenant: Tenant, body: EmbeddingCreate) -> job_service.Submission:
    with session_scope() as session:
        return service.prepare_embeddings(session, tenant, body)


def _load(tenant: Tenant, job_id: str) -> Job:
    with session_scope() as session:
        return job_service.get_job(session, tenant, job_id)


def _answer(tenant: Tenant, job: Job) -> tuple[int, dict[str, object]]:
    with session_scope() as session:
        return service.sync_answer(session, tenant, job)


@router.post("/embeddings", response_model=None, summary="Create embeddings")
async def create_embeddings(
    body: EmbeddingCreate, tenant: TenantDep, settings: SettingsDep
) -> JSONResponse:
    """Embed a string or a list of strings now: a one-line job on the workers, answered when
    it ends; `encoding_format` float or base64 (little-endian float32)."""
    submission = await run_in_threadpool(_prepare, tenant, body)
    job_id = submission.job.id
    deadline = time.monotonic() + WAIT_SECONDS
    # Registered before the submission: an end that comes before the first read still wakes.
    async with waits.job_end(job_id) as ended:
        await run_in_threadpool(group_commit.submit, submission)
        job = await run_in_threadpool(_load, tenant, job_id)
        while not job.is_terminal and time.monotonic() < deadline:
            await waits.until(ended, deadline)
            job = await run_in_threadpool(_load, tenant, job_id)
    if not job.is_terminal:
        message = f"no worker answered within {WAIT_SECONDS:g} s (job {job_id})"
        return openai_error(503, "timeout", message, headers={"Retry-After": "10"})
    status, answer = await run_in_threadpool(_answer, tenant, job)
    if status == 200:
        answer["model"] = body.model  # the name asked for, as OpenAI answers
    return JSONResponse(answer, status_code=status)


@router.get("/models", summary="List models")
def list_models(session: SessionDep, tenant: TenantDep) -> OpenAIModelList:
    """Every model the tenant can use, builtin `minilm` included."""
    return OpenAIModelList(data=openai_models.list_models(session, tenant))


@router.get("/models/{model_id}", summary="Retrieve a model")
def get_model(model_id: str, session: SessionDep, tenant: TenantDep) -> OpenAIModel:
    """One model by its id (`name` or `name@version`)."""
    return openai_models.get_model(session, tenant, model_id)
