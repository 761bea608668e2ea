"""`modelfarm_client` stays a client: httpx and the standard library, nothing of the server."""

from __future__ import annotations

import ast
import json
import socket
import subprocess
import sys
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from modelfarm_client import ApiError, Client, ClientError, FarmUnreachable

ROOT = Path(__file__).resolve().parents[2]
SERVER_SIDE = (
    "app",
    "workers",
    "sqlalchemy",
    "psycopg",
    "celery",
    "kombu",
    "redis",
    "torch",
    "transformers",
    "sklearn",
    "fastapi",
    "pydantic_settings",
)


def test_importing_the_client_loads_nothing_of_the_server() -> None:
    probe = "import json, sys, modelfarm_client; print(json.dumps(sorted(sys.modules)))"
    result = subprocess.run(
        [sys.executable, "-c", probe], capture_output=True, text=True, cwd=ROOT, check=True
    )
    loaded = json.loads(result.stdout)
    bad = [m for m in loaded if m.split(".")[0] in SERVER_SIDE]
    assert bad == [], bad
    assert "httpx" in loaded


def test_the_client_source_imports_only_httpx_and_the_standard_library() -> None:
    allowed = set(sys.stdlib_module_names) | {"httpx", "modelfarm_client"}
    found = set()
    for path in (ROOT / "modelfarm_client").rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Import):
                found |= {alias.name.split(".")[0] for alias in node.names}
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                found.add(node.module.split(".")[0])
    assert found - allowed == set()


def test_app_client_still_names_the_same_client() -> None:
    from app import client as old

    assert old.Client is Client and old.ApiError is ApiError
    assert "succeeded" in old.TERMINAL


def _closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def test_no_farm_is_farm_unreachable_not_an_api_error() -> None:
    url = f"http://127.0.0.1:{_closed_port()}"
    with Client(url, "mf_x", timeout=5) as client:
        with pytest.raises(FarmUnreachable) as raised:
            client.job("job_x")
        assert url in str(raised.value) and isinstance(raised.value, ClientError)
        with pytest.raises(FarmUnreachable):
            list(client.file_chunks("file_x"))


class _Proxy(BaseHTTPRequestHandler):
    """Something between the client and the farm that answers in its own shape."""

    def do_GET(self) -> None:
        body = b"<html>Bad Gateway</html>"
        self.send_response(502)
        self.send_header("Retry-After", "7")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args: object) -> None:
        pass


@pytest.fixture
def proxy_url() -> Iterator[str]:
    server = ThreadingHTTPServer(("127.0.0.1", 0), _Proxy)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()


def test_an_answer_not_in_the_api_shape_is_still_an_api_error(proxy_url: str) -> None:
    with Client(proxy_url, "mf_x", timeout=5) as client:
        with pytest.raises(ApiError) as raised:
            client.jobs()
    error = raised.value
    assert (error.status, error.code, error.retry_after) == (502, "http_error", 7.0)
    assert "Bad Gateway" in error.message
