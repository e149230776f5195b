"""A raw ASGI adapter: scope + receive → ``GatewayRequest``; ``GatewayResponse`` → send.

No framework in between: every layer here costs latency on every request (see the benchmark).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
from collections.abc import AsyncIterator, Awaitable, Callable, MutableMapping
from typing import Any
from urllib.parse import parse_qsl

import orjson

from aigw.bodies import read_limited
from gateway_core.app import Gateway
from gateway_core.config import GatewayConfig
from gateway_core.context import GatewayRequest, GatewayResponse

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]

# `aigw serve` hands the validated config to each worker process through this variable (JSON).
CONFIG_ENV = "AIGW_SERVE_CONFIG_JSON"
log = logging.getLogger("aigw")


class GatewayASGI:
    def __init__(self, gateway: Gateway) -> None:
        self.gateway = gateway
        self._max_body = gateway.config.server.max_body_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http":
            await self._http(scope, receive, send)
        elif scope["type"] == "lifespan":
            await self._lifespan(receive, send)

    async def _lifespan(self, receive: Receive, send: Send) -> None:
        while True:
            message = await receive()
            if message["type"] == "lifespan.startup":
                try:
                    await self.gateway.start()
                except Exception as exc:  # noqa: BLE001 - reported to the server, which refuses to start
                    await send({"type": "lifespan.startup.failed", "message": str(exc)})
                    return
                await send({"type": "lifespan.startup.complete"})
            elif message["type"] == "lifespan.shutdown":
                await self.gateway.close()
                await send({"type": "lifespan.shutdown.complete"})
                return

    async def _http(self, scope: Scope, receive: Receive, send: Send) -> None:
        headers: dict[str, str] = {}
        for raw_name, raw_value in scope["headers"]:
            name = raw_name.decode("latin-1").lower()
            value = raw_value.decode("latin-1")
            headers[name] = f"{headers[name]}, {value}" if name in headers else value
        body, size = await read_limited(_chunks(receive), headers.get("content-length", ""), self._max_body)
        query_string = scope.get("query_string", b"")
        client = scope.get("client")
        request = GatewayRequest(
            method=scope["method"],
            path=scope["path"],
            query=dict(parse_qsl(query_string.decode("latin-1"))) if query_string else {},
            headers=headers,
            body=body,
            body_size=size,
            client_ip=client[0] if client else "",
        )
        response = await self.gateway.handle(request)
        out_headers = [(k.encode("latin-1"), v.encode("latin-1")) for k, v in response.headers]
        if response.stream is None:
            out_headers.append((b"content-length", str(len(response.body)).encode()))
        await send({"type": "http.response.start", "status": response.status, "headers": out_headers})
        if response.stream is None:
            await send({"type": "http.response.body", "body": response.body})
        else:
            await _send_stream(response, receive, send)


async def _chunks(receive: Receive) -> AsyncIterator[bytes]:
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            return
        yield message.get("body", b"")
        if not message.get("more_body", False):
            return


async def _send_stream(response: GatewayResponse, receive: Receive, send: Send) -> None:
    """Relay the stream chunk by chunk; if the client disconnects, cancel it (and with it the upstream call)."""
    stream = response.stream
    assert stream is not None

    async def pump() -> None:
        async for chunk in stream:
            await send({"type": "http.response.body", "body": chunk, "more_body": True})
        await send({"type": "http.response.body", "body": b"", "more_body": False})

    async def wait_disconnect() -> None:
        while (await receive())["type"] != "http.disconnect":
            pass

    pump_task = asyncio.ensure_future(pump())
    watch_task = asyncio.ensure_future(wait_disconnect())
    try:
        await asyncio.wait({pump_task, watch_task}, return_when=asyncio.FIRST_COMPLETED)
    finally:
        for task in (pump_task, watch_task):
            if not task.done():
                task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await watch_task
        with contextlib.suppress(asyncio.CancelledError):
            await pump_task  # re-raises a failure of the pump other than cancellation
        aclose = getattr(stream, "aclose", None)
        if aclose is not None:
            await aclose()


def create_app() -> GatewayASGI:
    """Factory for uvicorn workers: the config comes from ``AIGW_SERVE_CONFIG_JSON`` set by `aigw serve`."""
    raw = os.environ.get(CONFIG_ENV)
    if not raw:
        raise RuntimeError(f"{CONFIG_ENV} is not set; start the gateway with `aigw serve`")
    data = orjson.loads(raw)
    no_auth = bool(data.pop("no_auth", False))
    config = GatewayConfig.model_validate(data).model_copy(update={"no_auth": no_auth})
    return GatewayASGI(Gateway(config, background_probes=True))
