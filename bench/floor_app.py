"""The floor under any gateway on aigw's stack (uvicorn + httptools + uvloop serving, aiohttp upstream calls): two
ASGI apps that do no gateway work at all, for bench/floor.sh.

``FLOOR=answer``: read the request body, answer the harness's fixed chat completion (the HTTP server alone).
``FLOOR=proxy``: read the body, POST it to the upstream with one aiohttp session per worker, answer what came
back (the two HTTP exchanges every gateway request makes, with nothing between them).
"""

from __future__ import annotations

import os
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import aiohttp

Scope = dict[str, Any]
Receive = Callable[[], Awaitable[dict[str, Any]]]
Send = Callable[[dict[str, Any]], Awaitable[None]]

_ANSWER = (Path(__file__).parent / "harness" / "chat_body.json").read_bytes()
_HEAD = [(b"content-type", b"application/json")]
_UPSTREAM_HEADERS = {"content-type": "application/json"}
_UPSTREAM = os.environ.get("FLOOR_UPSTREAM", "http://127.0.0.1:18000")


async def _body(receive: Receive) -> bytes:
    chunks = []
    while True:
        message = await receive()
        chunks.append(message.get("body", b""))
        if not message.get("more_body"):
            return b"".join(chunks)


class Floor:
    def __init__(self, proxy: bool) -> None:
        self._proxy = proxy
        self._session: aiohttp.ClientSession | None = None

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "lifespan":
            while (await receive())["type"] != "lifespan.shutdown":
                await send({"type": "lifespan.startup.complete"})
            if self._session is not None:
                await self._session.close()
            await send({"type": "lifespan.shutdown.complete"})
            return
        body = await _body(receive)
        answer = _ANSWER
        if self._proxy:
            if self._session is None:
                self._session = aiohttp.ClientSession(cookie_jar=aiohttp.DummyCookieJar())
            path = scope["path"] + ("?" + scope["query_string"].decode() if scope["query_string"] else "")
            async with self._session.post(_UPSTREAM + path, data=body, headers=_UPSTREAM_HEADERS) as response:
                answer = await response.read()
        headers = [*_HEAD, (b"content-length", str(len(answer)).encode())]
        await send({"type": "http.response.start", "status": 200, "headers": headers})
        await send({"type": "http.response.body", "body": answer})


def create_app() -> Floor:
    return Floor(proxy=os.environ.get("FLOOR", "answer") == "proxy")
