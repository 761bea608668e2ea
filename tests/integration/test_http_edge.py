"""The HTTP edge bounded (issue 25, part 1), replayed with the probe's own clients.

An API process of its own, with short timeouts so the slow clients are answered within the
test: a huge or header-heavy request head is a 431, one that trickles in is a 408, a body that
stops is a 408, and while four hostile clients keep at it another tenant's answers stay fast.
The same bounds hold, for the API and the dashboard, when uvicorn serves the app itself with
the bounded protocol named on its command line (docs/operations.md).
"""

from __future__ import annotations

import json
import os
import socket
import statistics
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from tests.helpers import api_process

pytestmark = pytest.mark.integration

EDGE = {
    "MODELFARM_HTTP_MAX_HEADER_BYTES": str(16 * 1024),
    "MODELFARM_HTTP_MAX_HEADERS": "50",
    "MODELFARM_HTTP_HEAD_TIMEOUT_SECONDS": "1",
    "MODELFARM_HTTP_BODY_IDLE_SECONDS": "1",
}

# Four hostile clients, in a process of their own (so their loops do not slow the measuring
# client's): two stream header bytes as fast as the socket takes them, two open connections
# that trickle a header line now and then. Each reconnects whenever it is cut off.
HOSTILE = """
import socket, sys, threading, time
host, port = sys.argv[1], int(sys.argv[2])
def stream():
    while True:
        try:
            with socket.create_connection((host, port)) as s:
                s.sendall(b"GET /v1/jobs HTTP/1.1\\r\\nHost: x\\r\\n")
                while True:
                    s.sendall(b"X-Pad: " + b"a" * 4000 + b"\\r\\n")
        except OSError:
            pass
def trickle():
    while True:
        conns = []
        try:
            for _ in range(50):
                c = socket.create_connection((host, port))
                c.sendall(b"GET /v1/jobs HTTP/1.1\\r\\n")
                conns.append(c)
            for _ in range(20):
                for c in conns:
                    c.sendall(b"X-Slow: 1\\r\\n")
                time.sleep(0.2)
        except OSError:
            pass
        for c in conns:
            c.close()
for target in (stream, stream, trickle, trickle):
    threading.Thread(target=target, daemon=True).start()
time.sleep(3600)
"""


@pytest.fixture(scope="module")
def edge_url(services: dict[str, str], tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    log = tmp_path_factory.mktemp("edge") / "api.log"
    with api_process({**services, **EDGE, "MODELFARM_API_WORKERS": "1"}, log) as url:
        yield url


@pytest.fixture(scope="module")
def uvicorn_url(
    services: dict[str, str], tmp_path_factory: pytest.TempPathFactory
) -> Iterator[str]:
    """The API (and its dashboard) served by uvicorn itself, as docs/operations.md shows:
    the app's factory, and the bounded protocol given by its import path."""
    from app.local.embedded import free_port
    from tests.helpers import die_with_parent, wait_for_http

    port = free_port()
    log = tmp_path_factory.mktemp("edge") / "uvicorn.log"
    command = [
        sys.executable,
        "-m",
        "uvicorn",
        "app.api.main:create_app",
        "--factory",
        "--http",
        "app.api.serve:BoundedHTTPProtocol",
        "--port",
        str(port),
    ]
    with log.open("wb") as out:
        proc = subprocess.Popen(
            command,
            env={**os.environ, **services, **EDGE},
            stdout=out,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            start_new_session=True,
            preexec_fn=die_with_parent,
        )
    url = f"http://127.0.0.1:{port}"
    try:
        wait_for_http(f"{url}/healthz")
        yield url
    finally:
        proc.terminate()
        try:
            proc.wait(20)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def _address(url: str) -> tuple[str, int]:
    host, port = url.removeprefix("http://").split(":")
    return host, int(port)


def _answer(sock: socket.socket) -> bytes:
    """What the server sent before it closed the connection."""
    sock.settimeout(10)
    data = b""
    while chunk := sock.recv(65536):
        data += chunk
    return data


@pytest.fixture(params=["modelfarm-api", "uvicorn"])
def any_url(request: pytest.FixtureRequest) -> str:
    """The same edge whichever server runs the app: `modelfarm api`, or uvicorn told to."""
    name = "edge_url" if request.param == "modelfarm-api" else "uvicorn_url"
    return str(request.getfixturevalue(name))


@pytest.mark.parametrize("path", ["/v1/jobs", "/ui/login"])
def test_a_huge_header_is_431_without_being_read_whole(any_url: str, path: str) -> None:
    with socket.create_connection(_address(any_url)) as sock:
        sock.sendall(b"GET %s HTTP/1.1\r\nHost: x\r\nX-Big: " % path.encode())
        sent = 0
        try:  # the probe sent 96 MiB; the server stops reading long before
            while sent < 96 * 1024**2:
                sock.sendall(b"a" * 65536)
                sent += 65536
        except OSError:
            pass  # reset by the server, which closed the connection
        answer = _answer(sock)
    assert answer.startswith(b"HTTP/1.1 431 "), answer[:200]
    assert b'"code": "request_header_fields_too_large"' in answer
    assert sent < 16 * 1024**2, f"{sent} bytes were taken before the refusal"


def test_readyz_says_where_rate_limits_are_kept_and_how_the_edge_is_served(any_url: str) -> None:
    ready = httpx.get(f"{any_url}/readyz").json()
    assert ready["rate_limits"] == "redis" and ready["http_edge"] == "bounded", ready


def test_readyz_says_so_when_the_app_is_served_without_the_bounds(
    services: dict[str, str],
) -> None:
    """Any other server (here the ASGI app called directly) leaves the edge to that server:
    never silently."""
    from fastapi.testclient import TestClient

    from app.api.main import create_app

    ready = TestClient(create_app()).get("/readyz")
    assert ready.status_code == 200, ready.text
    assert ready.json()["http_edge"] == "unbounded"


def test_too_many_headers_are_431(any_url: str) -> None:
    headers = {f"x-h{i}": "1" for i in range(60)}
    response = httpx.get(f"{any_url}/healthz", headers=headers)
    assert response.status_code == 431, response.text
    assert response.json()["error"]["code"] == "request_header_fields_too_large"
    assert httpx.get(f"{any_url}/healthz", headers=dict(list(headers.items())[:20])).is_success


@pytest.mark.parametrize("path", ["/healthz", "/ui/login"])
def test_a_head_that_trickles_in_is_408(any_url: str, path: str) -> None:
    with socket.create_connection(_address(any_url)) as sock:
        sock.sendall(b"GET %s HTTP/1.1\r\n" % path.encode())
        started = time.monotonic()
        for _ in range(3):  # a header line now and then, as the probe's 300 connections did
            time.sleep(0.5)
            try:
                sock.sendall(b"X-Slow: 1\r\n")
            except OSError:
                break
        answer = _answer(sock)
    assert answer.startswith(b"HTTP/1.1 408 "), answer[:200]
    assert time.monotonic() - started < 5


def test_a_body_that_stops_is_408(any_url: str) -> None:
    with socket.create_connection(_address(any_url)) as sock:
        sock.sendall(
            b"POST /v1/jobs HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
            b'Content-Length: 100\r\n\r\n{"model": '
        )
        answer = _answer(sock)
    assert answer.startswith(b"HTTP/1.1 408 "), answer[:200]


def _latencies(tenant: httpx.Client) -> list[float]:
    # 300 requests: their p99 is the third slowest, not one hiccup of a shared host (a
    # sweep, a collection) that the hostile clients did not cause.
    took = []
    for _ in range(300):
        started = time.perf_counter()
        response = tenant.get("/v1/jobs", params={"limit": 1})
        took.append(time.perf_counter() - started)
        assert response.status_code == 200, response.text
        time.sleep(0.01)
    return took


def test_four_hostile_clients_leave_another_tenants_latency_alone(
    edge_url: str, tenant_key: str, tmp_path: Path
) -> None:
    host, port = _address(edge_url)
    script = tmp_path / "hostile.py"
    script.write_text(HOSTILE)
    with httpx.Client(
        base_url=edge_url, headers={"Authorization": f"Bearer {tenant_key}"}, timeout=10
    ) as tenant:
        assert tenant.get("/v1/jobs", params={"limit": 1}).is_success  # warm: key, pool
        alone = _latencies(tenant)
        # niced: on a small shared host their own loops would otherwise take the CPU the
        # server needs, which is not what is measured here (the server's cost of them is)
        command = ["nice", "-n", "19", sys.executable, str(script), host, str(port)]
        hostile = subprocess.Popen(command)
        try:
            time.sleep(1.0)  # the hostile clients are at it
            took = _latencies(tenant)
            assert hostile.poll() is None, "the hostile clients stopped early"
        finally:
            hostile.kill()
            hostile.wait()
    p99, before = _p99(took), _p99(alone)
    print(f"GET /v1/jobs?limit=1 p99: {before * 1000:.1f} ms alone, {p99 * 1000:.1f} ms beside")
    # 100 ms (the bound); on a host so loaded that the tenant's p99 alone is already
    # over 40 ms, 2.5 times that (before the fix such requests waited seconds or timed out).
    bound = max(0.1, 2.5 * before)
    assert p99 < bound, (
        f"p99 {p99 * 1000:.0f} ms beside the hostile clients, {before * 1000:.0f} alone"
    )


def _p99(took: list[float]) -> float:
    return statistics.quantiles(took, n=100)[98]


def test_with_redis_away_limits_hold_in_process_and_readyz_says_so(
    services: dict[str, str], tmp_path: Path
) -> None:
    """The rate limiter never fails open: with Redis away (here: a port nobody listens on)
    each API process keeps the buckets itself, and /readyz names that before any request had
    to find out."""
    import secrets

    from app.local.embedded import free_port
    from app.services.keys import create_api_key
    from app.services.tenants import create_tenant
    from app.unit_of_work import session_scope

    with session_scope() as session:
        limits = {"rate_limit": 0.2, "rate_burst": 2}
        key = create_api_key(session, create_tenant(session, f"r-{secrets.token_hex(4)}", limits))
    away = {"MODELFARM_REDIS_URL": f"redis://127.0.0.1:{free_port()}/0"}
    env = {**services, **EDGE, **away, "MODELFARM_API_WORKERS": "1"}  # one process: one bucket
    with api_process(env, tmp_path / "api.log") as url:
        ready = httpx.get(f"{url}/readyz", timeout=30)
        assert ready.status_code == 503, ready.text
        assert "rate limits: in-process" in ready.json()["error"]["message"]
        with httpx.Client(
            base_url=url, headers={"Authorization": f"Bearer {key}"}, timeout=30
        ) as tenant:
            answers = [tenant.get("/v1/jobs", params={"limit": 1}) for _ in range(4)]
        assert [a.status_code for a in answers] == [200, 200, 429, 429], answers
        assert int(answers[-1].headers["Retry-After"]) >= 1


@pytest.mark.parametrize(
    ("path", "shape"),
    [
        ("/v1/webhooks/secret/rotate", {"code", "message"}),
        ("/openai/v1/models", {"message", "type", "param", "code"}),
    ],
)
def test_a_request_that_is_not_http_is_400_in_the_error_shape(
    any_url: str, path: str, shape: set[str]
) -> None:
    """A control byte in a header value is no HTTP (the fuzzer found it): uvicorn answered
    its plain-text sentence; the edge answers in the surface's error shape."""
    with socket.create_connection(_address(any_url)) as sock:
        sock.sendall(b"POST %s HTTP/1.1\r\nHost: x\r\nX-Key: a\x01b\r\n\r\n" % path.encode())
        answer = _answer(sock)
    head, _, body = answer.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 400 "), answer[:300]
    assert b"content-type: application/json" in head.lower(), head
    error = json.loads(body)["error"]
    assert set(error) == shape and error["code"] == "bad_request", error
    assert httpx.get(f"{any_url}/healthz").is_success  # the server goes on
