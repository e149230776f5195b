"""A backend's Set-Cookie must not be kept and sent upstream with later requests (of any user or key)."""

from __future__ import annotations

import orjson
from aiohttp import web

from gateway_core.config import config_from_dict, sha256_hex
from gateway_core.context import GatewayRequest
from tests.inprocess import running
from tests.unit.test_stream_relay import serving

ANSWER = {"object": "chat.completion", "choices": [], "usage": {"prompt_tokens": 1, "completion_tokens": 1}}


async def test_a_backends_set_cookie_is_never_sent_back_upstream() -> None:
    cookies_seen: list[str | None] = []

    async def handle(request: web.Request) -> web.Response:
        await request.read()
        cookies_seen.append(request.headers.get("Cookie"))
        response = web.json_response(ANSWER)
        # What an Azure front end sets: an affinity cookie for the host, which a jar would replay to everyone.
        response.set_cookie("ARRAffinity", "instance-7", path="/", httponly=True)
        return response

    async with serving(handle) as url:
        # By host name: aiohttp's default jar ignores cookies from IP addresses, not from names.
        url = url.replace("127.0.0.1", "localhost")
        config = config_from_dict(
            {
                "backends": [
                    {"name": "compat", "type": "openai", "url": url, "auth": {"type": "none"}, "deployments": ["m"]}
                ],
                "keys": [
                    {"name": "a", "sha256": sha256_hex("key-a"), "user": "alice"},
                    {"name": "b", "sha256": sha256_hex("key-b"), "user": "bob"},
                ],
                "stores": {"health": "memory://"},
                "usage": {"enabled": False},
            }
        )
        async with running(config) as gateway:
            for key in ("key-a", "key-b", "key-a"):
                raw = orjson.dumps({"model": "m", "messages": [{"role": "user", "content": "hi"}]})
                request = GatewayRequest("POST", "/v1/chat/completions", {}, {"api-key": key}, raw, len(raw))
                response = await gateway.handle(request)
                assert response.status == 200, response.body
                # The backend's cookie does not reach the client either (only listed headers are returned).
                assert all(name != "set-cookie" for name, _ in response.headers)
    assert cookies_seen == [None, None, None]
