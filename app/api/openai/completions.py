"""/openai/v1/chat/completions and /openai/v1/completions: text generation, answered by the
workers as a job of one request line (app/api/openai/sync.py), or streamed as it is decoded
(app/api/openai/streams.py)."""

from __future__ import annotations

from fastapi import APIRouter, Response
from starlette.concurrency import run_in_threadpool

from app.api.deps import TenantDep
from app.api.openai import streams, sync
from app.api.openai.errors import OpenAIRoute
from app.models import Tenant
from app.schemas.openai import ChatCompletionCreate, CompletionCreate, GenerationCreate
from app.services import jobs as job_service
from app.services import openai as service
from app.unit_of_work import session_scope

router = APIRouter(route_class=OpenAIRoute)


def _prepare(tenant: Tenant, endpoint: str, body: GenerationCreate) -> job_service.Submission:
    with session_scope() as session:
        return service.prepare_generation(
            session, tenant, endpoint, body.request_body(), bool(body.stream)
        )


async def _generate(endpoint: str, body: GenerationCreate, tenant: Tenant) -> Response:
    submission = await run_in_threadpool(_prepare, tenant, endpoint, body)
    if not body.stream:
        return await sync.respond(tenant, submission, body.model)
    if body.stream_options is not None:
        include_usage = body.stream_options.include_usage
    else:
        include_usage = False
    return await streams.respond(tenant, submission, endpoint, body.model, include_usage)


@router.post("/chat/completions", response_model=None, summary="Create a chat completion")
async def create_chat_completion(body: ChatCompletionCreate, tenant: TenantDep) -> Response:
    """Answer a conversation with a `text-generation` model, rendered with its chat template:
    a `chat.completion`, or with `stream: true` server-sent `chat.completion.chunk` events."""
    return await _generate("/v1/chat/completions", body, tenant)


@router.post("/completions", response_model=None, summary="Create a completion")
async def create_completion(body: CompletionCreate, tenant: TenantDep) -> Response:
    """Continue a prompt (or each of a list of prompts, one choice each) with a
    `text-generation` model: a `text_completion`, or with `stream: true` its chunks."""
    return await _generate("/v1/completions", body, tenant)
