"""/openai/v1/embeddings and /openai/v1/models; an embeddings request is answered by the
workers as a job of one line (app/api/openai/sync.py)."""

from __future__ import annotations

from fastapi import APIRouter
from fastapi.responses import JSONResponse

from app.api.deps import SessionDep, TenantDep
from app.api.openai import sync
from app.api.openai.errors import OpenAIRoute
from app.schemas.openai import EmbeddingCreate, OpenAIModel, OpenAIModelList
from app.services import openai_models

router = APIRouter(route_class=OpenAIRoute)


@router.post("/embeddings", response_model=None, summary="Create embeddings")
async def create_embeddings(body: EmbeddingCreate, tenant: TenantDep) -> JSONResponse:
    """Embed a string or a list of strings now: a one-line job on the workers, answered when
    it ends; `encoding_format` float or base64 (little-endian float32)."""
    return await sync.request(tenant, body.model, "/v1/embeddings", body.request_body())


@router.get("/models", summary="List models")
def list_models(session: SessionDep, tenant: TenantDep) -> OpenAIModelList:
    """Every model the tenant can use, builtin `minilm` included."""
    return OpenAIModelList(data=openai_models.list_models(session, tenant))


@router.get("/models/{model_id}", summary="Retrieve a model")
def get_model(model_id: str, session: SessionDep, tenant: TenantDep) -> OpenAIModel:
    """One model by its id (`name` or `name@version`)."""
    return openai_models.get_model(session, tenant, model_id)
