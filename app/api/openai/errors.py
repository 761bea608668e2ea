"""OpenAI's error shape, `{"error": {"message", "type", "param", "code"}}`, under /openai/v1 only.

The app's handlers (app/api/errors.py) answer the native shape everywhere else, so these routes
turn errors into answers themselves, in their route class, before those handlers see them. The
status codes are what make the `openai` client raise its classes: 401 AuthenticationError, 404
NotFoundError, 400 BadRequestError, 422 UnprocessableEntityError, 409 ConflictError, 429
RateLimitError (with `Retry-After` passed on).
"""

from __future__ import annotations

from collections.abc import Callable, Coroutine
from typing import Any

from fastapi import Request, Response
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from sqlalchemy.exc import IntegrityError
from starlette.exceptions import HTTPException

from app.api.errors import (
    HTTP_CODES,
    count_rejection,
    json_body_error,
    not_json_hint,
    openai_error,
)
from app.api.guards import GuardedRoute
from app.services.errors import ServiceError


def _validation(request: Request, exc: RequestValidationError) -> JSONResponse:
    errors = exc.errors()
    first = errors[0] if errors else {}
    loc = [str(p) for p in first.get("loc", ()) if p not in ("body", "query", "path", "form")]
    param = ".".join(loc) or None
    message = f"{param}: {first.get('msg')}" if param else str(first.get("msg", "invalid request"))
    broken = json_body_error(exc)
    if broken:
        return openai_error(400, "invalid_json", broken)
    hint = not_json_hint(request, exc)
    return openai_error(422, "invalid_request", hint or message, None if hint else param)


def _headers(exc: Exception) -> dict[str, str] | None:
    headers = getattr(exc, "headers", None)
    return dict(headers) if headers else None


class OpenAIRoute(GuardedRoute):
    """A route of /openai/v1: the native guards, then errors in OpenAI's shape."""

    def get_route_handler(self) -> Callable[[Request], Coroutine[Any, Any, Response]]:
        handler = super().get_route_handler()

        async def answered(request: Request) -> Response:
            try:
                return await handler(request)
            except ServiceError as exc:
                count_rejection(exc)
                return openai_error(exc.status_code, exc.code, exc.message, None, _headers(exc))
            except RequestValidationError as exc:
                return _validation(request, exc)
            except HTTPException as exc:
                code = HTTP_CODES.get(exc.status_code, "error")
                return openai_error(exc.status_code, code, str(exc.detail), None, _headers(exc))
            except IntegrityError:
                return openai_error(409, "conflict", "the request conflicts with existing data")

        return answered
