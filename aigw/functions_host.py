"""The Azure Functions side of the gateway: Starlette request in (HTTP streaming extension), response out.

The Functions worker gives async triggers one event loop; the ``Gateway`` is built on the first request in
that loop (no network I/O at import time), and every trigger (HTTP, timer) shares it: one upstream session,
one set of store clients per process. The host keeps one: it builds another only when ``AIGW_CONFIG``
changes (another file, or other inline YAML), on ``reload()``, or if a different loop shows up (in-process
tests), and closes the one it replaces (requests still running on that one may fail, as on any restart).
"""

from __future__ import annotations

import asyncio
import logging
import os
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from pathlib import Path

import anyio
from starlette.requests import ClientDisconnect, Request
from starlette.responses import Response, StreamingResponse

from aigw.bodies import read_limited
from aigw.client_address import client_address, host_of, networks
from aigw.functions_settings import config_from_app_settings
from aigw.gc_freeze import freeze_startup_objects
from gateway_core.app import Gateway
from gateway_core.config import ServerSettings
from gateway_core.context import GatewayRequest, GatewayResponse
from gateway_core.usage.summariser import is_batch_id

log = logging.getLogger("aigw")


def functions_client_ip(headers: Mapping[str, str], peer: str, server: ServerSettings) -> str:
    """The caller's address on Azure Functions, for `ip` limit rules.

    The worker's peer is the App Service front end, not the client. The front end sets ``client-ip``
    (``address:port`` of the connection it accepted) and overwrites any value a client sent, so that header is
    the peer; behind a further proxy (Front Door, Application Gateway) listed in ``server.trusted_proxies``,
    ``X-Forwarded-For`` is read from the right as in `aigw serve`.
    """
    front_end_peer = host_of(headers.get("client-ip", "")) or peer
    return client_address(front_end_peer, headers.get("x-forwarded-for", ""), networks(server.trusted_proxies))


class FunctionsHost:
    def __init__(self, app_root: Path) -> None:
        self._app_root = app_root
        self._gateway: Gateway | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._source: str | None = None  # the AIGW_CONFIG the gateway was built from
        self._lock = asyncio.Lock()

    async def gateway(self) -> Gateway:
        """The process's gateway, built on first use in this event loop (or when ``AIGW_CONFIG`` changed)."""
        loop = asyncio.get_running_loop()
        source = os.environ.get("AIGW_CONFIG", "")
        if self._gateway is not None and self._loop is loop and self._source == source:
            return self._gateway
        async with self._lock:
            if self._gateway is None or self._loop is not loop or self._source != source:
                return await self._replace(loop, source)
            return self._gateway

    async def reload(self) -> Gateway:
        """Build a gateway from the app settings now, then close the one it replaces."""
        async with self._lock:
            return await self._replace(asyncio.get_running_loop(), os.environ.get("AIGW_CONFIG", ""))

    async def _replace(self, loop: asyncio.AbstractEventLoop, source: str) -> Gateway:
        # Build and start the new one first: a bad config leaves the old one serving and raises ConfigError.
        gateway = Gateway(config_from_app_settings(self._app_root))
        await gateway.start()
        # Adopt what other instances (and their timer triggers) learned before routing anything: a new instance
        # would otherwise try a backend every other one knows is down (a store outage is logged, not raised).
        await gateway.sync_health()
        freeze_startup_objects()
        old, old_loop = self._gateway, self._loop
        self._gateway, self._loop, self._source = gateway, loop, source
        if old is not None:
            if old_loop is loop:
                await old.close()
            else:
                # Its connections belong to a loop that is gone (the worker has one; tests make one each).
                log.warning("dropped a gateway built in another event loop without closing it")
        return gateway

    async def close(self) -> None:
        """Close the gateway's connections (worker shutdown, and the end of each in-process test)."""
        if self._gateway is not None:
            gateway = self._gateway
            self._gateway, self._loop, self._source = None, None, None
            await gateway.close()

    async def check_health(self) -> dict[str, str]:
        """The timer trigger's work: probe every backend (unless ``routing.probe.enabled`` is false), then publish
        what this instance learned to the health store and adopt what the others did."""
        gateway = await self.gateway()
        states = await gateway.prober.probe_all() if gateway.config.routing.probe.enabled else {}
        await gateway.sync_health()
        return states

    async def handle(self, request: Request) -> Response:
        gateway = await self.gateway()
        server = gateway.config.server
        headers = {k.lower(): v for k, v in request.headers.items()}
        head = GatewayRequest(
            method=request.method,
            path=request.url.path,
            query=dict(request.query_params),
            headers=headers,
            client_ip=functions_client_ip(headers, request.client.host if request.client else "", server),
            query_string=request.url.query,
        )
        checked = await gateway.check_head(head)  # 401/404 before the body is read
        if isinstance(checked, GatewayResponse):
            await self._flush_usage(gateway)
            return Response(checked.body, status_code=checked.status, headers=dict(checked.headers))
        try:
            try:
                body, size = await read_limited(
                    request.stream(), headers.get("content-length", ""), server.max_body_bytes
                )
            except ClientDisconnect:
                gateway.client_left(checked)  # recorded (499), as in aigw serve
                raise
            result = await gateway.handle_checked(checked, body, size)
        except Exception:
            await self._flush_usage(gateway)
            raise
        out_headers = dict(result.headers)
        if result.stream is not None:
            stream = _flushed_at_end(result.stream, lambda: self._flush_usage(gateway))
            return StreamingResponse(stream, status_code=result.status, headers=out_headers)
        await self._flush_usage(gateway)
        return Response(result.body, status_code=result.status, headers=out_headers)

    async def _flush_usage(self, gateway: Gateway) -> None:
        """Write this invocation's usage record before the invocation ends: between invocations the host may
        freeze the worker (no background task runs) or recycle it (a buffered record would be lost)."""
        try:
            await gateway.flush_usage()
        except Exception:  # a failed flush spills to disk inside the writer; never fail the answer over it
            log.exception("usage flush at the end of an invocation failed")

    async def sweep_usage(self) -> int:
        """The usage timer trigger's work: summarise the batches still pending after
        ``usage.sweep_older_than_s`` (a queue message that was lost or poisoned). Returns how many."""
        gateway = await self.gateway()
        runtime = gateway.usage_runtime
        if runtime is None:
            return 0
        await gateway.flush_usage()
        return await runtime.summariser.sweep(gateway.config.usage.sweep_older_than_s)

    async def summarise_batch(self, body: str) -> bool:
        """The queue trigger's work: absorb the batch a message names. False (logged) for a body that is no
        batch id: retrying it cannot help. Raises ``BatchNotFound`` or ``StorageError`` when it should be
        delivered again (the Functions runtime redelivers, then moves it to ``aigw-usage-poison``)."""
        gateway = await self.gateway()
        runtime = gateway.usage_runtime
        if runtime is None:
            log.warning("usage queue message ignored: usage is not enabled in this app's config")
            return False
        if not is_batch_id(body):
            log.error("usage queue: a message that is not a usage batch id (%d characters) was dropped", len(body))
            return False
        await runtime.summariser.process(body)
        return True


async def _flushed_at_end(stream: AsyncIterator[bytes], flush: Callable[[], Awaitable[None]]) -> AsyncIterator[bytes]:
    """Relay ``stream``, then flush: the usage policy records a stream when it ends (inside this relay), and
    the flush runs before the invocation that streams it is over, however the stream ended."""
    try:
        async for chunk in stream:
            yield chunk
    finally:
        # Shielded: a reader that went away cancels this relay, and the record must still be written.
        with anyio.CancelScope(shield=True):
            aclose = getattr(stream, "aclose", None)
            if aclose is not None:
                await aclose()
            await flush()
