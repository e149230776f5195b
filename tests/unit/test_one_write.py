"""An answer with a content-length leaves in one transport write (uvicorn wrote its head and body in two: two
``send()`` syscalls and two TCP segments per answer); a stream's head still leaves before its first chunk.

The server is uvicorn with the gateway's protocol, on a loopback port, in the test's event loop; a subclass of
the protocol counts the writes that reach the connection's transport.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any

import pytest
import uvicorn

from aigw.asgi import Receive, Scope, Send, _send_response
from aigw.protocol import HeadTimeoutProtocol
from aigw.serve import _uvicorn_config, bind
from gateway_core.context import GatewayResponse

BODY = b'{"object": "chat.completion", "choices": []}'
BIG_BODY = b'{"data": "' + b"x" * (1024 * 1024) + b'"}'


class _Counted:
    """The connection's transport, counting its writes (everything else passes through)."""

    def __init__(self, transport: asyncio.Transport, writes: list[bytes]) -> None:
        self._transport = transport
        self._writes = writes

    def write(self, data: bytes) -> None:
        self._writes.append(bytes(data))
        self._transport.write(data)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._transport, name)


class App:
    def __init__(self) -> None:
        self.writes: list[bytes] = []
        self.release = asyncio.Event()

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            return
        if scope["path"] == "/stream":
            await send({"type": "http.response.start", "status": 200, "headers": [(b"content-type", b"text/plain")]})
            await self.release.wait()
            await send({"type": "http.response.body", "body": b"data: x\n\n", "more_body": False})
            return
        body = BIG_BODY if scope["path"] == "/big" else BODY
        await _send_response(GatewayResponse(200, [("content-type", "application/json")], body), send, close=False)


@pytest.fixture
async def server() -> AsyncIterator[tuple[int, App]]:
    app = App()

    class Counting(HeadTimeoutProtocol):
        def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
            super().connection_made(_Counted(transport, app.writes))  # type: ignore[arg-type]

    config = _uvicorn_config(app, workers=1, log_level="warning")
    config.loop = "asyncio"
    config.lifespan = "off"
    config.http = Counting
    config.load()
    sock = bind("127.0.0.1", 0)
    served = uvicorn.Server(config)
    served.lifespan = config.lifespan_class(config)
    await served.startup(sockets=[sock])
    try:
        yield int(sock.getsockname()[1]), app
    finally:
        app.release.set()
        await served.shutdown()


async def read_answer(reader: asyncio.StreamReader) -> tuple[bytes, bytes]:
    head = await reader.readuntil(b"\r\n\r\n")
    length = next(int(line.split(b":")[1]) for line in head.split(b"\r\n") if line.startswith(b"content-length"))
    return head, await reader.readexactly(length)


async def test_an_answer_with_a_content_length_is_one_write(server: tuple[int, App]) -> None:
    port, app = server
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        for _ in range(3):  # keep-alive: each answer of the connection
            app.writes.clear()
            writer.write(b"POST /x HTTP/1.1\r\nhost: a\r\ncontent-length: 2\r\n\r\n{}")
            head, body = await read_answer(reader)
            assert head.startswith(b"HTTP/1.1 200 OK\r\n") and body == BODY
            assert app.writes == [head + body]
    finally:
        writer.close()


async def test_a_heads_answer_and_a_streams_head_go_out_at_once(server: tuple[int, App]) -> None:
    port, app = server
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        # HEAD: uvicorn writes no body, so nothing may wait for one.
        writer.write(b"HEAD /x HTTP/1.1\r\nhost: a\r\n\r\n")
        head = await reader.readuntil(b"\r\n\r\n")
        assert b"content-length: " + str(len(BODY)).encode() in head
        # A stream (chunked): its head reaches the client while its first chunk is still to come.
        writer.write(b"GET /stream HTTP/1.1\r\nhost: a\r\n\r\n")
        head = await reader.readuntil(b"\r\n\r\n")
        assert b"transfer-encoding: chunked" in head
        app.release.set()
        assert await reader.readuntil(b"0\r\n\r\n") == b"9\r\ndata: x\n\n\r\n0\r\n\r\n"
    finally:
        writer.close()


async def test_a_large_answer_is_not_copied_to_join_its_head(server: tuple[int, App]) -> None:
    # Joining copies the body on the event loop: past 64 KiB the head goes first and the body is written as it is.
    port, app = server
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        writer.write(b"POST /big HTTP/1.1\r\nhost: a\r\ncontent-length: 2\r\n\r\n{}")
        head, body = await read_answer(reader)
        assert body == BIG_BODY
        assert app.writes == [head, BIG_BODY]
    finally:
        writer.close()
