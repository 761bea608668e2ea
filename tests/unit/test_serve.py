"""The API's HTTP protocol turns Nagle's algorithm off on sockets uvicorn's workers accept.

uvicorn binds the listening socket of its worker processes as `socket.socket(AF_INET)`, protocol
number 0, and asyncio then leaves TCP_NODELAY off: every answer written as headers then body
waited 40 ms for the client's delayed ACK. The socket here is made the same way.
"""

from __future__ import annotations

import asyncio
import socket
from typing import Any

import pytest
from uvicorn.config import Config
from uvicorn.protocols.http.h11_impl import H11Protocol
from uvicorn.server import ServerState

from app.api.serve import HTTP_PROTOCOL, BoundedHTTPProtocol


async def _app(scope: Any, receive: Any, send: Any) -> None:  # never called: no request is sent
    raise AssertionError("no request was sent")


async def _accepted_nodelay(protocol_class: type[asyncio.Protocol]) -> int:
    config = Config(app=_app, http=protocol_class, lifespan="off")
    config.load()
    state = ServerState()
    made: list[Any] = []

    def factory() -> asyncio.Protocol:
        protocol = protocol_class(config=config, server_state=state, app_state={})  # type: ignore[call-arg]
        made.append(protocol)
        return protocol

    listening = socket.socket(socket.AF_INET)  # as uvicorn's bind_socket makes it: proto 0
    listening.bind(("127.0.0.1", 0))
    server = await asyncio.get_running_loop().create_server(factory, sock=listening)
    try:
        _, writer = await asyncio.open_connection(*listening.getsockname())
        for _ in range(100):
            if made and made[0].transport is not None:
                break
            await asyncio.sleep(0.01)
        accepted = made[0].transport.get_extra_info("socket")
        value = int(accepted.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY))
        writer.close()
        return value
    finally:
        server.close()


@pytest.mark.parametrize(
    ("protocol_class", "nodelay"), [(BoundedHTTPProtocol, True), (H11Protocol, False)]
)
def test_accepted_sockets_send_without_waiting(
    protocol_class: type[asyncio.Protocol], nodelay: bool
) -> None:
    assert bool(asyncio.run(_accepted_nodelay(protocol_class))) is nodelay


def test_the_cli_serves_with_it() -> None:
    from uvicorn.importer import import_from_string

    assert import_from_string(HTTP_PROTOCOL) is BoundedHTTPProtocol
