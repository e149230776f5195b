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

from aigw.bodies import BodyDeadline, read_limited
from aigw.client_address import client_address, networks
from aigw.gc_freeze import freeze_startup_objects
from gateway_core.app import Gateway
from gateway_core.config import ConfigError, config_from_dict
from gateway_core.context import GatewayRequest, GatewayResponse
from gateway_core.errors import PayloadTooLarge, RequestTimeout

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
        server = gateway.config.server
        self._max_body = server.max_body_bytes
        self._body_timeout_s = server.body_timeout_s
        self._body_min_rate = server.body_min_rate
        self._trusted = networks(server.trusted_proxies)

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
                freeze_startup_objects()
                await send({"type": "lifespan.startup.complete"})
            elif message["type"] == "lifespan.shutdown":
                await self.gateway.close()
                await send({"type": "lifespan.shutdown.complete"})
                return

    async def _http(self, scope: Scope, receive: Receive, send: Send) -> None:
        headers: dict[str, str] = {}
        repeated: dict[str, list[str]] = {}  # joined once below: joining as they come was quadratic
        for raw_name, raw_value in scope["headers"]:
            name = raw_name.decode("latin-1").lower()
            value = raw_value.decode("latin-1")
            if name in headers:
                repeated.setdefault(name, [headers[name]]).append(value)
            else:
                headers[name] = value
        for name, values in repeated.items():
            headers[name] = ", ".join(values)
        query_string = scope.get("query_string", b"")
        client = scope.get("client")
        peer = client[0] if client else ""
        head = GatewayRequest(
            method=scope["method"],
            path=scope["path"],
            query=dict(parse_qsl(query_string.decode("latin-1"))) if query_string else {},
            headers=headers,
            client_ip=client_address(peer, headers.get("x-forwarded-for", ""), self._trusted),
            query_string=query_string.decode("latin-1"),
        )
        # Any answer sent before the body was read in full closes the connection: otherwise the server would
        # keep draining (and discarding) whatever the client goes on sending.
        checked = await self.gateway.check_head(head)
        if isinstance(checked, GatewayResponse):
            await _send_response(checked, send, close=True)
            return
        announced = headers.get("content-length", "")
        if scope["method"] != "POST":
            # Only POST paths take a body: a GET with one (announced or chunked) is answered from its head, and
            # the connection is closed rather than the body read, so no client can make a bodiless path buffer.
            has_body = (announced.isdigit() and int(announced) > 0) or "transfer-encoding" in headers
            answer = await self.gateway.handle_checked(checked, b"", 0)  # GET answers are JSON
            await _send_response(answer, send, close=has_body)
            return
        if announced.isdigit() and int(announced) > self._max_body:
            # Refused on the head alone, before receive() is ever called: uvicorn would answer a client's
            # "Expect: 100-continue" with "100 Continue" and invite the upload it is about to refuse.
            too_large = PayloadTooLarge(f"Request body is larger than this gateway's limit of {self._max_body} bytes.")
            await _send_response(self.gateway.refuse_checked(checked, too_large), send, close=True)
            return
        loop = asyncio.get_running_loop()
        deadline = BodyDeadline(self._body_timeout_s, self._body_min_rate, loop.time())
        body_reader = _Body(receive, deadline)
        try:
            body, size = await read_limited(body_reader.chunks(), headers.get("content-length", ""), self._max_body)
        except TimeoutError:
            message = deadline.message(loop.time())
            await _send_response(self.gateway.refuse_checked(checked, RequestTimeout(message)), send, close=True)
            return
        if body_reader.disconnected:
            self.gateway.client_left(checked)  # recorded (499), as a client that leaves later is
            return
        response = await _unless_disconnected(self.gateway.handle_checked(checked, body, size), receive)
        if response is None:
            return  # the client went away: the pipeline (and its upstream call) was cancelled
        if response.stream is None:
            await _send_response(response, send, close=not body_reader.complete)
        else:
            await send({"type": "http.response.start", "status": response.status, "headers": _raw(response)})
            await _send_stream(response, receive, send)


class _Body:
    """The request body as chunks; past ``deadline`` (no progress, or too slow) raises ``TimeoutError``."""

    def __init__(self, receive: Receive, deadline: BodyDeadline) -> None:
        self._receive = receive
        self._deadline = deadline
        self.complete = False
        self.disconnected = False

    async def chunks(self) -> AsyncIterator[bytes]:
        loop = asyncio.get_running_loop()
        while True:
            wait_s = self._deadline.wait_s(loop.time())
            if wait_s <= 0:
                raise TimeoutError
            async with asyncio.timeout(wait_s):  # not wait_for: that makes a task of each receive()
                message = await self._receive()
            if message["type"] == "http.disconnect":
                self.disconnected = True
                return
            chunk = message.get("body", b"")
            self._deadline.received(len(chunk))
            yield chunk
            if not message.get("more_body", False):
                self.complete = True
                return


async def _unless_disconnected(work: Awaitable[GatewayResponse], receive: Receive) -> GatewayResponse | None:
    """Await ``work``; if the client disconnects first, cancel it (and with it any upstream call) and return None.

    ``work`` runs in this task and only the watch gets one: a task for each and ``asyncio.wait`` over both cost
    ~3% of the event loop's time per request."""
    current = asyncio.current_task()
    if current is None:  # not in a task (never under a server): nothing to cancel
        return await work
    gone = False

    async def watch() -> None:
        nonlocal gone
        await _disconnect(receive)
        gone = True
        current.cancel()

    watcher = asyncio.ensure_future(watch())
    try:
        response = await work
    except asyncio.CancelledError:
        if not gone:
            raise  # cancelled from outside (the server shutting down): not ours to absorb
        current.uncancel()
        return None
    finally:
        watcher.cancel()  # it never cancels this task once cancelled: the throw comes before its next line
    if gone:  # the work absorbed the cancel: the client is gone all the same
        current.uncancel()
        return None
    return response


async def _disconnect(receive: Receive) -> None:
    while (await receive())["type"] != "http.disconnect":
        pass


def _raw(response: GatewayResponse) -> list[tuple[bytes, bytes]]:
    return [(k.encode("latin-1"), v.encode("latin-1")) for k, v in response.headers]


async def _send_response(response: GatewayResponse, send: Send, *, close: bool) -> None:
    """A complete (non-stream) response; ``close`` ends the connection after it."""
    out_headers = _raw(response)
    out_headers.append((b"content-length", str(len(response.body)).encode()))
    if close:
        out_headers.append((b"connection", b"close"))
    await send({"type": "http.response.start", "status": response.status, "headers": out_headers})
    await send({"type": "http.response.body", "body": response.body})


async def _send_stream(response: GatewayResponse, receive: Receive, send: Send) -> None:
    """Relay the stream chunk by chunk; if the client disconnects, cancel it (and with it the upstream call)."""
    stream = response.stream
    if stream is None:
        return

    async def pump() -> None:
        async for chunk in stream:
            await send({"type": "http.response.body", "body": chunk, "more_body": True})
        await send({"type": "http.response.body", "body": b"", "more_body": False})

    pump_task = asyncio.ensure_future(pump())
    watch_task = asyncio.ensure_future(_disconnect(receive))
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
        raise ConfigError(f"{CONFIG_ENV} is not set; start the gateway with `aigw serve`")
    try:
        data = orjson.loads(raw)
    except orjson.JSONDecodeError:
        raise ConfigError(f"{CONFIG_ENV}: not valid JSON; start the gateway with `aigw serve`") from None
    if not isinstance(data, dict):
        raise ConfigError(f"{CONFIG_ENV}: not a JSON object; start the gateway with `aigw serve`")
    no_auth = bool(data.pop("no_auth", False))
    config = config_from_dict(data, source=CONFIG_ENV).model_copy(update={"no_auth": no_auth})
    return GatewayASGI(Gateway(config, background_probes=True))
