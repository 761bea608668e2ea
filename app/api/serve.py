"""How `modelfarm api` serves: uvicorn's httptools protocol, Nagle's algorithm off, and the
request head bounded.

With several API processes uvicorn binds the listening socket itself, as a plain
`socket.socket(AF_INET)` whose protocol number is 0, and asyncio only turns TCP_NODELAY on for
sockets that say IPPROTO_TCP. Without it a response written as headers then body waits for the
client's delayed ACK: 40 ms added to every answer (measured: a one-item job's POST took 52 ms
instead of 7). Each connection turns it on here instead.

uvicorn bounds neither the request head nor the time it takes to arrive (one 96 MiB header was
read and answered; 300 connections trickling a header line every 5 s stayed open; 4 streaming
header bytes slowed every other client's answers). So before anyone is asked, with no key
needed, a connection is answered and closed when (issue 25, part 1):

- its request head grows past HTTP_MAX_HEADER_BYTES, or has more than HTTP_MAX_HEADERS
  headers: 431;
- its request head is not complete HTTP_HEAD_TIMEOUT_SECONDS after the connection opened or
  the previous response ended: 408;
- its body stops arriving for HTTP_BODY_IDLE_SECONDS: 408 when nothing was answered yet, else
  closed.

A request that is not HTTP at all (a control byte in a header, a broken request line) gets
uvicorn's 400 in the API's error shape rather than its plain-text sentence, and OpenAI's shape
under `/openai/`, as every other refusal.

A hostile client therefore costs one connection and the bytes of one head, never a parse of
megabytes on the event loop that every other client shares. The dashboard is served by the
same app, so it has the same edge.

Served another way, the same edge holds when uvicorn is given this protocol:
`uvicorn app.api.main:create_app --factory --http app.api.serve:BoundedHTTPProtocol`
(docs/operations.md). Every request it reads carries the `modelfarm.bounded_edge` extension
in its ASGI scope, so `/readyz` says `http_edge: bounded` or, served without it, `unbounded`.
"""

from __future__ import annotations

import asyncio
import json
import socket
from typing import Any

from uvicorn.protocols.http.httptools_impl import STATUS_LINE, HttpToolsProtocol

from app.api.errors import OPENAI_PREFIX
from app.config import get_settings

REASONS = {
    400: b"Bad Request",
    408: b"Request Timeout",
    431: b"Request Header Fields Too Large",
}
#: The ASGI scope extension that says a request came through this protocol (`/readyz`).
EDGE_EXTENSION = "modelfarm.bounded_edge"


class BoundedHTTPProtocol(HttpToolsProtocol):
    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        sock: Any = transport.get_extra_info("socket")
        if sock is not None and sock.family in (socket.AF_INET, socket.AF_INET6):
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        settings = get_settings()
        self._max_head = settings.http_max_header_bytes
        self._max_headers = settings.http_max_headers
        self._head_seconds = settings.http_head_timeout_seconds
        self._body_seconds = settings.http_body_idle_seconds
        self._refused = False
        self._in_body = False
        self._head_bytes = 0
        self._timer: asyncio.TimerHandle | None = None
        super().connection_made(transport)
        self._wait_for_head()

    def connection_lost(self, exc: Exception | None) -> None:
        self._stop_timer()
        super().connection_lost(exc)

    def data_received(self, data: bytes) -> None:
        if self._refused:
            return
        in_head = not self._in_body
        if in_head:
            self._head_bytes += len(data)
        else:
            self._restart_timer(self._body_seconds)
        super().data_received(data)
        # Still in the head after this chunk: the whole chunk was head. (A chunk that ended it
        # may hold body bytes too; it is one socket read, so that bounds it anyway.)
        if in_head and not self._in_body and self._head_bytes > self._max_head:
            self._refuse(431, "the request head is larger than the server accepts")

    def on_message_begin(self) -> None:
        super().on_message_begin()
        self.scope["extensions"] = {EDGE_EXTENSION: {}}
        self._in_body = False

    def on_header(self, name: bytes, value: bytes) -> None:
        if len(self.headers) >= self._max_headers and not self._refused:
            self._refuse(431, "the request has more headers than the server accepts")
        if not self._refused:
            super().on_header(name, value)

    def on_headers_complete(self) -> None:
        if self._refused:
            return
        self._in_body, self._head_bytes = True, 0
        self._restart_timer(self._body_seconds)
        super().on_headers_complete()

    def on_body(self, body: bytes) -> None:
        if not self._refused:
            super().on_body(body)

    def on_message_complete(self) -> None:
        if self._refused:
            return
        self._stop_timer()  # the app has the whole request; its answer takes what it takes
        self._in_body = False
        super().on_message_complete()
        cycle = getattr(self, "cycle", None)
        if cycle is not None and cycle.response_complete and not self.transport.is_closing():
            self._wait_for_head()  # answered before its body ended: the next head is due now

    def on_response_complete(self) -> None:
        super().on_response_complete()
        # An answer sent before the request's body ended (a 413, say): the rest of that body
        # is still body, read against the body's idle time, never counted as the next head.
        if not self.transport.is_closing() and not self._in_body:
            self._wait_for_head()

    def send_400_response(self, msg: str) -> None:
        if not self._refused:  # a parse error after a refusal: answered already
            self._refuse(400, "the request is not valid HTTP")

    def _wait_for_head(self) -> None:
        self._in_body, self._head_bytes = False, 0
        self._restart_timer(self._head_seconds)

    def _restart_timer(self, seconds: float) -> None:
        self._stop_timer()
        self._timer = self.loop.call_later(seconds, self._timed_out)

    def _stop_timer(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None

    def _timed_out(self) -> None:
        self._timer = None
        if self.transport.is_closing():
            return
        if self._in_body and self.flow is not None and self.flow.read_paused:
            # Not the client's idling: the app has not taken what came (flow control paused
            # reading), so the body is not late.
            self._restart_timer(self._body_seconds)
            return
        if self._in_body and self.cycle is not None and self.cycle.response_started:
            self.transport.close()  # mid-answer: there is no status left to send
            return
        if not self._in_body and self._head_bytes == 0:
            # Idle, no request begun (a kept-alive connection, say): closed without an answer,
            # as uvicorn's keep-alive timeout does, so a client sending its next request just
            # then does not read a 408 meant for nothing.
            self.transport.close()
            return
        what = "body" if self._in_body else "request head"
        self._refuse(408, f"the {what} did not arrive in time")

    def _refuse(self, status: int, message: str) -> None:
        self._refused = True
        self._stop_timer()
        if self.cycle is not None and not self.cycle.response_complete:
            self.cycle.disconnected = True  # the app, if it runs, sees a client that left
            self.cycle.message_event.set()
        code = REASONS[status].decode().lower().replace(" ", "_")
        error: dict[str, Any] = {"code": code, "message": message}
        target = bytes(getattr(self, "url", b"") or b"")  # the request target read so far
        if target.startswith(OPENAI_PREFIX.encode()):
            error = {
                "message": message,
                "type": "invalid_request_error",
                "param": None,
                "code": code,
            }
        body = json.dumps({"error": error})
        head = STATUS_LINE.get(status) or b"HTTP/1.1 %d %s\r\n" % (status, REASONS[status])
        self.transport.write(
            head
            + b"content-type: application/json\r\n"
            + b"content-length: %d\r\nconnection: close\r\n\r\n" % len(body)
            + body.encode()
        )
        self.transport.close()


HTTP_PROTOCOL = f"{__name__}:{BoundedHTTPProtocol.__name__}"
