"""What the API refuses before a route sees a request: oversized bodies and unstorable text.

Bodies are counted as they arrive, with or without Content-Length, so a request over its
limit is cut with 413 at the limit: the rest is neither read nor spooled (FastAPI reads and
Starlette spools a body before any route or dependency runs, so this sits in front of them).

Text: a URL whose percent-escapes are not UTF-8 or hold NUL, a body that is not UTF-8, and JSON
strings with NUL or lone surrogates (which PostgreSQL cannot store, and UTF-8 cannot encode)
answer 422, never 500.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable, Coroutine
from typing import Any
from urllib.parse import unquote_to_bytes

from fastapi import Request, Response
from fastapi.routing import APIRoute
from starlette.exceptions import HTTPException
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from app.api.errors import error_response_for
from app.config import get_settings
from app.services.errors import InvalidRequest

# Multipart framing around an uploaded file.
MULTIPART_SLACK = 64 * 1024


class BodyTooLarge(HTTPException):
    """Raised from `receive` once the body passes its limit. An HTTPException, so FastAPI's
    body reading lets it through and the app's handler answers in the error shape."""

    def __init__(self, limit: int) -> None:
        super().__init__(413, _limit_message(limit))


class RequestGuard:
    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        respond = error_response_for(scope["path"])
        problem = _url_problem(scope)
        if problem is not None:
            await respond(422, "invalid_request", problem)(scope, receive, send)
            return
        limit = body_limit(scope["path"])
        declared = dict(scope["headers"]).get(b"content-length", b"")
        if declared.isdigit() and int(declared) > limit:
            await respond(413, "payload_too_large", _limit_message(limit))(scope, receive, send)
            return
        received = 0
        started = False

        async def counted() -> Message:
            nonlocal received
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > limit:
                    raise BodyTooLarge(limit)
            return message

        async def tracked(message: Message) -> None:
            nonlocal started
            started = started or message["type"] == "http.response.start"
            await send(message)

        try:
            await self.app(scope, counted, tracked)
        except BodyTooLarge:
            if started:
                raise
            await respond(413, "payload_too_large", _limit_message(limit))(scope, receive, send)


def body_limit(path: str) -> int:
    settings = get_settings()
    if path.rstrip("/") in ("/v1/files", "/openai/v1/files"):
        return settings.max_upload_bytes + MULTIPART_SLACK
    return settings.max_request_bytes


def _limit_message(limit: int) -> str:
    return f"request bodies here are limited to {limit} bytes"


def _url_problem(scope: Scope) -> str | None:
    raw_path = scope.get("raw_path") or scope["path"].encode("utf-8", "surrogateescape")
    # Separators are ASCII, so decoding the whole query at once judges every key and value.
    query = scope.get("query_string", b"").replace(b"+", b" ")
    for part in (unquote_to_bytes(raw_path), unquote_to_bytes(query)):
        try:
            text = part.decode("utf-8")
        except UnicodeDecodeError:
            return "the URL holds bytes that are not valid UTF-8"
        if "\x00" in text:
            return "the URL holds a NUL character"
    return None


# A JSON escape that may decode to text PostgreSQL cannot store: only bodies holding one are
# parsed and walked here (the common case costs one regex scan).
_SUSPECT_ESCAPE = re.compile(rb"\\u(?:[dD][89a-fA-F][0-9a-fA-F]{2}|0000)")


def text_problem(body: bytes) -> str | None:
    """Why a JSON body cannot be stored as it is, or None."""
    try:
        body.decode("utf-8")
    except UnicodeDecodeError:
        return "the body is not valid UTF-8"
    if not _SUSPECT_ESCAPE.search(body):
        return None
    try:
        document = json.loads(body)
    except (ValueError, RecursionError):
        return None  # FastAPI answers invalid JSON itself
    stack: list[Any] = [document]
    while stack:
        value = stack.pop()
        if isinstance(value, dict):
            stack.extend(value.keys())
            stack.extend(value.values())
        elif isinstance(value, list):
            stack.extend(value)
        elif isinstance(value, str):
            if "\x00" in value:
                return "a string in the body holds a NUL character (\\u0000)"
            try:
                value.encode("utf-8")
            except UnicodeEncodeError:
                return "a string in the body holds a lone surrogate (not valid Unicode)"
    return None


class GuardedRoute(APIRoute):
    """Every route of the API: JSON bodies are checked for unstorable text first."""

    def get_route_handler(self) -> Callable[[Request], Coroutine[Any, Any, Response]]:
        handler = super().get_route_handler()

        async def guarded(request: Request) -> Response:
            content_type = request.headers.get("content-type", "")
            if request.method in ("POST", "PUT", "PATCH") and "multipart" not in content_type:
                problem = text_problem(await request.body())
                if problem is not None:
                    raise InvalidRequest(problem)
            return await handler(request)

        return guarded
