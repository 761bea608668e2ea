"""Every non-2xx answer has one shape: {"error": {"code", "message"}}."""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from sqlalchemy.exc import DataError, DBAPIError, IntegrityError
from sqlalchemy.exc import TimeoutError as PoolTimeout
from starlette.exceptions import HTTPException

from app.counters import REJECTED_REQUESTS, REJECTION_REASONS
from app.services.errors import ServiceError

log = logging.getLogger(__name__)

HTTP_CODES = {
    400: "bad_request",
    401: "unauthorized",
    403: "forbidden",
    404: "not_found",
    405: "method_not_allowed",
    409: "conflict",
    413: "payload_too_large",
    415: "unsupported_media_type",
    422: "invalid_request",
    429: "rate_limited",
    503: "service_unavailable",
}


def error_response(
    status: int, code: str, message: str, headers: dict[str, str] | None = None
) -> JSONResponse:
    return JSONResponse(
        {"error": {"code": code, "message": message}}, status_code=status, headers=headers
    )


OPENAI_PREFIX = "/openai/"  #: under it errors are OpenAI's shape (app/api/openai/errors.py)
_OPENAI_TYPES = {
    401: "authentication_error",
    403: "permission_error",
    404: "not_found_error",
    409: "conflict_error",
    429: "rate_limit_error",
}


def openai_error(
    status: int,
    code: str | None,
    message: str,
    param: str | None = None,
    headers: dict[str, str] | None = None,
) -> JSONResponse:
    """OpenAI's error body, `{"error": {"message", "type", "param", "code"}}`."""
    kind = _OPENAI_TYPES.get(status, "server_error" if status >= 500 else "invalid_request_error")
    body = {"error": {"message": message, "type": kind, "param": param, "code": code}}
    return JSONResponse(body, status_code=status, headers=headers)


def error_response_for(path: str) -> Callable[[int, str, str], JSONResponse]:
    """The error shape of the surface a path belongs to (for answers given before routing)."""
    return openai_error if path.startswith(OPENAI_PREFIX) else error_response


def json_body_error(exc: RequestValidationError) -> str | None:
    """'the body is not valid JSON: Expecting value at line 2, column 7' for a body that does
    not parse (FastAPI says `18: JSON decode error`, a character offset); else None."""
    for err in exc.errors():
        if err.get("type") != "json_invalid":
            continue
        loc = err.get("loc", ())
        reason = (err.get("ctx") or {}).get("error") or "JSON decode error"
        body = exc.body if isinstance(exc.body, str) else ""
        if len(loc) < 2 or not isinstance(loc[1], int):
            return f"the body is not valid JSON: {reason}"
        offset = loc[1]
        line = body.count("\n", 0, offset) + 1
        column = offset - (body.rfind("\n", 0, offset) + 1) + 1
        return f"the body is not valid JSON: {reason} at line {line}, column {column}"
    return None


def not_json_hint(request: Request, exc: RequestValidationError) -> str | None:
    """A JSON body sent under another content type (curl -d sends a form's) is never parsed:
    say which header is missing instead of 'Input should be a valid dictionary'."""
    content_type = request.headers.get("content-type", "")
    if "json" in content_type or "multipart" in content_type:
        return None
    if not any(tuple(err.get("loc", ())) == ("body",) for err in exc.errors()):
        return None
    sent = f"as {content_type.split(';')[0]}" if content_type else "without a content type"
    return (
        f"the body was sent {sent}, so it was not read as JSON: send it with the header "
        "Content-Type: application/json (curl: -H 'Content-Type: application/json')"
    )


def _validation_message(exc: RequestValidationError, request: Request) -> str:
    said = json_body_error(exc) or not_json_hint(request, exc)
    if said:
        return said
    return errors_in_words(exc.errors())


def errors_in_words(errors: Sequence[Any]) -> str:
    """Pydantic's errors as `field: what is wrong` (the first five), for a person."""
    parts = []
    for err in errors[:5]:
        where = ".".join(str(p) for p in err.get("loc", ()) if p != "body")
        parts.append(f"{where}: {err.get('msg')}" if where else str(err.get("msg")))
    return "; ".join(parts) or "the request is not valid"


def count_rejection(exc: ServiceError) -> None:
    """A refusal by a tenant's rate limit or quota counts in /metrics, on either surface."""
    if exc.code in REJECTION_REASONS:
        REJECTED_REQUESTS.labels(exc.code).inc()


def install_error_handlers(app: FastAPI) -> None:
    @app.exception_handler(ServiceError)
    async def _service(_: Request, exc: ServiceError) -> JSONResponse:
        count_rejection(exc)
        return error_response(exc.status_code, exc.code, exc.message, exc.headers)

    @app.exception_handler(RequestValidationError)
    async def _invalid(request: Request, exc: RequestValidationError) -> JSONResponse:
        return error_response(422, "invalid_request", _validation_message(exc, request))

    @app.exception_handler(HTTPException)
    async def _http(request: Request, exc: HTTPException) -> JSONResponse:
        # No route answered (an unknown method, say): the shape of the surface asked.
        code = HTTP_CODES.get(exc.status_code, "error")
        return error_response_for(request.url.path)(exc.status_code, code, str(exc.detail))

    @app.exception_handler(IntegrityError)
    async def _conflict(_: Request, exc: IntegrityError) -> JSONResponse:
        return error_response(409, "conflict", "the request conflicts with existing data")

    async def _db_down(_: Request, exc: Exception) -> JSONResponse:
        # Connection lost, server down or restarting, pool exhausted: a retryable 503, not a 500.
        log.warning("database unavailable: %s", exc)
        return error_response(503, "service_unavailable", "the database is not reachable")

    @app.exception_handler(DataError)
    async def _bad_data(_: Request, exc: DataError) -> JSONResponse:
        # The database refused a value (a NUL character, say): the request's fault, not a 503.
        return error_response(
            422, "invalid_request", "the request holds a value that cannot be stored"
        )

    app.add_exception_handler(DBAPIError, _db_down)
    app.add_exception_handler(PoolTimeout, _db_down)

    @app.exception_handler(Exception)
    async def _unexpected(request: Request, exc: Exception) -> JSONResponse:
        log.exception("unhandled error")
        respond = error_response_for(request.url.path)
        return respond(500, "internal_error", "an internal error occurred")
