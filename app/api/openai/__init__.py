"""The OpenAI-compatible surface under /openai/v1: files, batches, embeddings, chat completions,
completions and models, routers over the same services as the native /v1 (docs/decisions/0007)."""

from __future__ import annotations

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse

from app.api.errors import openai_error
from app.api.openai import audio, batches, completions, embeddings, files, rerank
from app.schemas.openai import OpenAIErrorResponse

#: What every operation here may answer, in OpenAI's error shape.
ERRORS: dict[int | str, dict[str, object]] = {
    status: {"model": OpenAIErrorResponse, "description": meaning}
    for status, meaning in {
        400: "The request is not valid (BadRequestError).",
        401: "No valid API key (AuthenticationError).",
        404: "No such object for this tenant (NotFoundError).",
        422: "A field is not valid (UnprocessableEntityError).",
        429: "Over the rate limit or a quota, `Retry-After` says when (RateLimitError).",
        503: "The database or the broker is not reachable; try again.",
    }.items()
}

router = APIRouter(prefix="/openai/v1", tags=["openai"], responses=ERRORS)
for module in (files, batches, embeddings, completions, rerank, audio):
    router.include_router(module.router)


@router.api_route(
    "/{path:path}", methods=["GET", "POST", "DELETE", "PUT", "PATCH"], include_in_schema=False
)
async def unknown(path: str, request: Request) -> JSONResponse:
    """A path this surface does not have answers 404 in OpenAI's shape (NotFoundError)."""
    return openai_error(
        404, "unknown_url", f"{request.method} /openai/v1/{path} is not served here"
    )
