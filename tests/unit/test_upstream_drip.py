"""A streaming call that gets a whole answer (a JSON body, or an error) must read it within the backend's timeout:
the call itself has only a per-read timeout (a stream may run long), so a backend dripping that body a byte at a
time held the request for as long as it liked."""

from __future__ import annotations

import asyncio
import time

import orjson
from aiohttp import web

from gateway_core.config import config_from_dict, sha256_hex
from gateway_core.context import GatewayRequest
from tests.inprocess import running
from tests.unit.test_stream_relay import serving

ANSWER = orjson.dumps(
    {"object": "chat.completion", "choices": [], "usage": {"prompt_tokens": 1, "completion_tokens": 1}}
)


async def test_a_whole_answer_to_a_streaming_call_is_read_within_the_timeout() -> None:
    async def handle(request: web.Request) -> web.StreamResponse:
        await request.read()
        response = web.StreamResponse(headers={"content-type": "application/json"})
        response.content_length = len(ANSWER)
        await response.prepare(request)
        for byte in ANSWER:  # each read gets a byte well within the per-read timeout
            await response.write(bytes([byte]))
            await asyncio.sleep(0.2)
        return response

    async with serving(handle) as url:
        config = config_from_dict(
            {
                "backends": [
                    {
                        "name": "compat",
                        "type": "openai",
                        "url": url,
                        "auth": {"type": "none"},
                        "deployments": ["m"],
                        "timeout_s": 1,
                    }
                ],
                "keys": [{"name": "a", "sha256": sha256_hex("key-a"), "user": "alice"}],
                "stores": {"health": "memory://"},
                "usage": {"enabled": False},
                "routing": {"max_attempts": 1},
            }
        )
        async with running(config) as gateway:
            raw = orjson.dumps({"model": "m", "stream": True, "messages": [{"role": "user", "content": "hi"}]})
            request = GatewayRequest("POST", "/v1/chat/completions", {}, {"api-key": "key-a"}, raw, len(raw))
            started = time.monotonic()
            response = await gateway.handle(request)
            elapsed = time.monotonic() - started
    # The body takes ~20 s to drip; the backend's timeout is 1 s.
    assert response.status == 504, response.body
    assert elapsed < 8, elapsed
