"""Refuse oversized request bodies from their Content-Length, before a byte of them is read.

FastAPI reads (and Starlette spools) a body before any route or dependency runs, so the check
has to sit in front of the application. Uploads are also counted while they are copied to the
store (a body sent without Content-Length is caught there).
"""

from __future__ import annotations

from starlette.types import ASGIApp, Receive, Scope, Send

from app.api.errors import error_response
from app.config import get_settings

# Multipart framing around an uploaded file.
MULTIPART_SLACK = 64 * 1024


class BodySizeLimit:
    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http":
            declared = dict(scope["headers"]).get(b"content-length", b"")
            limit = self._limit(scope["path"])
            if declared.isdigit() and int(declared) > limit:
                response = error_response(
                    413, "payload_too_large", f"request bodies here are limited to {limit} bytes"
                )
                await response(scope, receive, send)
                return
        await self.app(scope, receive, send)

    @staticmethod
    def _limit(path: str) -> int:
        settings = get_settings()
        if path.rstrip("/") == "/v1/files":
            return settings.max_upload_bytes + MULTIPART_SLACK
        return settings.max_request_bytes
