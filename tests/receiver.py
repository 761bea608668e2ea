"""A real HTTP webhook receiver on loopback, scripted per request, for the webhook tests."""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from standardwebhooks import Webhook

from app.local.embedded import free_port


@dataclass
class Received:
    at: float  # time.time() when the request arrived
    path: str
    headers: dict[str, str]
    body: bytes

    @property
    def event(self) -> dict[str, Any]:
        return json.loads(self.body)


@dataclass
class Reply:
    status: int = 200
    headers: dict[str, str] = field(default_factory=dict)
    delay: float = 0.0  # seconds to hold the request before answering


class Receiver:
    """Answers each POST with the next scripted Reply (200 once the script runs out)."""

    def __init__(self, port: int | None = None) -> None:
        self.port = port or free_port()
        self.script: list[Reply] = []
        self.requests: list[Received] = []
        self._lock = threading.Lock()
        self._server: ThreadingHTTPServer | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/hook"

    def start(self) -> Receiver:
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:  # noqa: N802 - the name http.server calls
                body = self.rfile.read(int(self.headers.get("content-length") or 0))
                with receiver._lock:
                    receiver.requests.append(
                        Received(time.time(), self.path, dict(self.headers.items()), body)
                    )
                    reply = receiver.script.pop(0) if receiver.script else Reply()
                time.sleep(reply.delay)
                self.send_response(reply.status)
                for name, value in reply.headers.items():
                    self.send_header(name, value)
                self.send_header("content-length", "0")
                self.end_headers()

            def log_message(self, *_: Any) -> None:
                pass

        ThreadingHTTPServer.allow_reuse_address = True
        self._server = ThreadingHTTPServer(("127.0.0.1", self.port), Handler)
        self._server.daemon_threads = True
        threading.Thread(target=self._server.serve_forever, daemon=True).start()
        return self

    def stop(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None

    def wait_for(self, count: int, timeout: float = 60) -> list[Received]:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            with self._lock:
                if len(self.requests) >= count:
                    return list(self.requests)
            time.sleep(0.05)
        raise AssertionError(f"receiver got {len(self.requests)} requests, expected {count}")

    def events(self) -> list[str]:
        with self._lock:
            return [r.event["type"] for r in self.requests]


@contextmanager
def receiver(port: int | None = None) -> Iterator[Receiver]:
    r = Receiver(port).start()
    try:
        yield r
    finally:
        r.stop()


def verify(secret: str, request: Received) -> dict[str, Any]:
    """The payload, once `standardwebhooks` accepts its signature (raises otherwise)."""
    return Webhook(secret).verify(request.body, request.headers)  # type: ignore[no-any-return]
