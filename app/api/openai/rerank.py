"""/openai/v1/rerank: OpenAI has no rerank endpoint, so this is TEI's, Cohere's and Jina's
shape, answered by a cross-encoder (`text-ranking`) or, by cosine, by any embedding model."""

from __future__ import annotations

from fastapi import APIRouter
from fastapi.responses import JSONResponse

from app.api.deps import TenantDep
from app.api.openai import sync
from app.api.openai.errors import OpenAIRoute
from app.schemas.openai import RerankCreate

router = APIRouter(route_class=OpenAIRoute)


@router.post("/rerank", response_model=None, summary="Rerank documents")
async def rerank(body: RerankCreate, tenant: TenantDep) -> JSONResponse:
    """Score each document against the query now (a one-line job on the workers): `results`
    of `{index, relevance_score}`, best first, at most `top_n`."""
    return await sync.request(tenant, body.model, "/v1/rerank", body.request_body())
