"""What keeps the dashboard's pages and forms to their own tenant's browser (issue 25, part 5).

- Every /ui answer carries a Content-Security-Policy (scripts and styles from the farm only,
  no framing, forms post only here) and `X-Frame-Options: DENY`, so a page cannot be framed
  for clickjacking or made to run a script it did not ship.
- A state-changing request (POST) under /ui must come from the dashboard's own pages: its
  Origin (or, without one, its Referer) must name this host. With the SameSite=Strict cookie
  that is OWASP's "verify origin with standard headers" defence; a client that sends neither
  (curl) has no cookie of a victim to abuse.
- Every form that acts as the tenant (submit, cancel, retry) also carries a CSRF token, checked
  by its route (`check_csrf`): an HMAC of the session's key under SECRET_KEY (OWASP's
  "HMAC-based token" pattern), so it is the same in every API process, changes with the key,
  and cannot be made by anyone who does not hold the key. Login (no session yet) and logout
  (harmless) rely on the origin check alone.
- Login attempts are limited per client address, and logins per tenant, with the same token
  buckets as the API's rate limits (Redis, or each API process's own while Redis is away).

A pure ASGI middleware: requests outside /ui pay one string comparison.
"""

from __future__ import annotations

import hashlib
import hmac
from typing import Any
from urllib.parse import urlsplit

from app import ratelimit
from app.config import get_settings

CSP = (
    "default-src 'self'; script-src 'self'; style-src 'self' 'unsafe-inline'; "
    "img-src 'self' data:; object-src 'none'; base-uri 'none'; form-action 'self'; "
    "frame-ancestors 'none'"
)
HEADERS = [
    (b"content-security-policy", CSP.encode()),
    (b"x-frame-options", b"DENY"),
    (b"x-content-type-options", b"nosniff"),
    (b"referrer-policy", b"same-origin"),
]


class DashboardGuard:
    def __init__(self, app: Any) -> None:
        self.app = app

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] != "http" or not scope["path"].startswith("/ui"):
            await self.app(scope, receive, send)
            return
        if scope["method"] == "POST" and not _same_origin(scope):
            await _forbidden(send)
            return

        async def with_headers(message: Any) -> None:
            if message["type"] == "http.response.start":
                message["headers"] = [*message.get("headers", []), *HEADERS]
            await send(message)

        await self.app(scope, receive, with_headers)


def _same_origin(scope: Any) -> bool:
    headers = dict(scope.get("headers") or [])
    host = headers.get(b"host", b"").decode("latin-1").lower()
    claimed = headers.get(b"origin") or headers.get(b"referer")
    if claimed is None:
        return True  # not a browser: no victim's cookie rides along (see the module's note)
    origin = urlsplit(claimed.decode("latin-1"))
    return bool(host) and origin.netloc.lower() == host


async def _forbidden(send: Any) -> None:
    body = b"This form must be sent from the dashboard's own page."
    await send(
        {
            "type": "http.response.start",
            "status": 403,
            "headers": [
                (b"content-type", b"text/plain; charset=utf-8"),
                (b"content-length", str(len(body)).encode()),
                *HEADERS,
            ],
        }
    )
    await send({"type": "http.response.body", "body": body})


async def login_wait(client: str, tenant_id: str | None, per_minute: int) -> int:
    """Seconds to wait before another login attempt from `client` (or for `tenant_id`, once
    its key is known); 0 to go on."""
    bucket = f"ui-login:tenant:{tenant_id}" if tenant_id else f"ui-login:client:{client}"
    decision = await ratelimit.take(bucket, per_minute / 60, per_minute)
    return 0 if decision.allowed else decision.retry_after


def csrf_token(key: str) -> str:
    """The token the dashboard's forms carry for the session holding `key`."""
    secret = get_settings().secret_key.get_secret_value().encode()
    return hmac.new(secret, b"ui-csrf:" + key.encode(), hashlib.sha256).hexdigest()


def csrf_ok(key: str, token: str) -> bool:
    return bool(key) and hmac.compare_digest(csrf_token(key), token)
