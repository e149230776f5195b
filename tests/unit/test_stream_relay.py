"""Streams from an OpenAI-compatible server that omits or mislabels the content-type of its SSE answer.

The upstream is a tiny aiohttp server in the test: it sends its first chunk, then waits for an event the test
sets, so the test can see the first chunk reach the client while the backend has not sent the rest.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from typing import Any

import orjson
import pytest
from aiohttp import hdrs, web

from gateway_core.app import Gateway
from gateway_core.clock import ManualClock
from gateway_core.config import config_from_dict, sha256_hex
from gateway_core.context import GatewayRequest
from gateway_core.storage.memory import MemoryCounters
from tests.inprocess import running

START = 1_795_000_020.0  # the start of a minute
USAGE = {"prompt_tokens": 3, "completion_tokens": 2, "total_tokens": 5}  # far from the estimate (8 + 300)


def event(payload: dict[str, Any]) -> bytes:
    return b"data: " + orjson.dumps(payload) + b"\n\n"


def content(text: str) -> bytes:
    return event({"object": "chat.completion.chunk", "choices": [{"index": 0, "delta": {"content": text}}]})


class _Untyped(web.StreamResponse):
    """A response without any content-type: aiohttp adds application/octet-stream, some servers send none."""

    async def _write_headers(self) -> None:
        self.headers.popall(hdrs.CONTENT_TYPE, None)
        await super()._write_headers()


class Upstream:
    def __init__(self, content_type: str | None) -> None:
        self.content_type = content_type
        self.release = asyncio.Event()
        self.second_sent = False

    async def handle(self, request: web.Request) -> web.StreamResponse:
        await request.read()
        response = _Untyped() if self.content_type is None else web.StreamResponse()
        if self.content_type is not None:
            response.headers[hdrs.CONTENT_TYPE] = self.content_type
        await response.prepare(request)
        await response.write(content("Hel"))
        await self.release.wait()
        self.second_sent = True
        await response.write(content("lo") + event({"choices": [], "usage": USAGE}) + b"data: [DONE]\n\n")
        await response.write_eof()
        return response


@asynccontextmanager
async def serving(handle: Callable[[web.Request], Awaitable[web.StreamResponse]]) -> AsyncIterator[str]:
    """An OpenAI-compatible upstream on a free loopback port whose chat completions ``handle`` answers: its URL."""
    app = web.Application()
    app.router.add_post("/v1/chat/completions", handle)
    runner = web.AppRunner(app)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", 0).start()
    try:
        yield f"http://127.0.0.1:{runner.addresses[0][1]}"
    finally:
        await runner.cleanup()


@pytest.fixture(params=[None, "text/plain; charset=utf-8", "application/json"], ids=["none", "text-plain", "json"])
async def upstream(request: pytest.FixtureRequest) -> AsyncIterator[tuple[str, Upstream]]:
    server = Upstream(request.param)
    async with serving(server.handle) as url:
        try:
            yield url, server
        finally:
            server.release.set()


def gateway_for(url: str) -> AbstractAsyncContextManager[Gateway]:
    """A started gateway in front of the upstream at ``url``, with a TPM rule that shows what was charged."""
    config = config_from_dict(
        {
            "backends": [
                {"name": "compat", "type": "openai", "url": url, "auth": {"type": "none"}, "deployments": ["m"]}
            ],
            "keys": [{"name": "k", "sha256": sha256_hex("k"), "user": "u"}],
            "limits": {"rules": [{"name": "tpm", "key": "user", "tokens_per_minute": 10_000}]},
            "stores": {"counters": "memory://", "health": "memory://"},
        }
    )
    return running(config, ManualClock(START))


def stream_request() -> GatewayRequest:
    raw = orjson.dumps(
        {"model": "m", "messages": [{"role": "user", "content": "hi"}], "stream": True, "max_tokens": 300}
    )
    return GatewayRequest("POST", "/v1/chat/completions", {}, {"api-key": "k"}, raw, len(raw))


async def charged(gateway: Gateway) -> int:
    await gateway.tasks.drain()
    assert isinstance(gateway.counters, MemoryCounters)
    return await gateway.counters.get("tpm:tpm:default/u", int(START))


async def test_a_stream_without_an_event_stream_content_type_is_relayed_incrementally_and_counted(
    upstream: tuple[str, Upstream],
) -> None:
    url, server = upstream
    async with gateway_for(url) as gateway:
        # Before the fix the gateway read the whole body first, which the upstream holds back: a hang, not a stream.
        response = await asyncio.wait_for(gateway.handle(stream_request()), 10)
        assert response.status == 200 and response.stream is not None
        assert response.header("content-type") == "text/event-stream"
        first = await asyncio.wait_for(anext(response.stream), 10)
        assert b'"Hel"' in first and not server.second_sent
        server.release.set()
        rest = b"".join([chunk async for chunk in response.stream])
        assert b'"lo"' in rest and rest.endswith(b"data: [DONE]\n\n")
        assert b'"usage"' not in first + rest  # the gateway asked for it; the client did not
        assert await charged(gateway) == USAGE["total_tokens"]  # read from the stream, not the estimate


async def test_a_json_answer_to_a_stream_request_stays_json_and_its_usage_is_read() -> None:
    answer = {"object": "chat.completion", "choices": [{"index": 0, "message": {"content": "Hello"}}], "usage": USAGE}

    async def handle(request: web.Request) -> web.Response:
        await request.read()
        return web.json_response(answer)  # a backend that ignores "stream": true

    async with serving(handle) as url, gateway_for(url) as gateway:
        response = await gateway.handle(stream_request())
        assert response.status == 200 and response.stream is None
        assert (response.header("content-type") or "").startswith("application/json")
        assert orjson.loads(response.body) == answer
        assert await charged(gateway) == USAGE["total_tokens"]


@pytest.mark.parametrize("sep", [b"\r\r", b"\n\r\n"], ids=["cr-cr", "lf-crlf"])
async def test_a_stream_framed_with_other_sse_line_endings_is_relayed_as_it_arrives(sep: bytes) -> None:
    """CR CR and LF CRLF end an event as well as LF LF: such events were held until the stream ended."""
    release = asyncio.Event()
    second_sent = False

    def framed(payload: dict[str, Any]) -> bytes:
        return b"data: " + orjson.dumps(payload) + sep

    def said(text: str) -> bytes:
        return framed({"object": "chat.completion.chunk", "choices": [{"index": 0, "delta": {"content": text}}]})

    async def handle(request: web.Request) -> web.StreamResponse:
        nonlocal second_sent
        await request.read()
        response = web.StreamResponse(headers={hdrs.CONTENT_TYPE: "text/event-stream"})
        await response.prepare(request)
        await response.write(said("Hel"))
        await release.wait()
        second_sent = True
        await response.write(said("lo") + framed({"choices": [], "usage": USAGE}) + b"data: [DONE]" + sep)
        await response.write_eof()
        return response

    async with serving(handle) as url, gateway_for(url) as gateway:
        try:
            response = await asyncio.wait_for(gateway.handle(stream_request()), 10)
            assert response.status == 200 and response.stream is not None
            first = await asyncio.wait_for(anext(response.stream), 10)
            assert b'"Hel"' in first and not second_sent
            release.set()
            rest = b"".join([chunk async for chunk in response.stream])
            assert b'"lo"' in rest and b"data: [DONE]" in rest
            assert b'"usage"' not in first + rest  # the gateway asked for it; the client did not
            assert await charged(gateway) == USAGE["total_tokens"]
        finally:
            release.set()  # the upstream's handler waits for it: let it end before the server stops
