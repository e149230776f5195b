"""The Azure Functions side of the gateway: Starlette request in (HTTP streaming extension), response out.

The Functions worker gives async triggers one event loop; the ``Gateway`` is built on the first request in
that loop (no network I/O at import time). The host keeps one: it builds another only when ``AIGW_CONFIG``
names another file, on ``reload()``, or if a different loop shows up (in-process tests), and closes the one
it replaces (requests still running on that one may fail, as on any restart).
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import os
from collections.abc import Mapping
from pathlib import Path

from starlette.requests import Request
from starlette.responses import Response, StreamingResponse

from aigw.bodies import read_limited
from aigw.client_address import client_address, host_of, networks
from gateway_core.app import Gateway
from gateway_core.config import GatewayConfig, ServerSettings, load_config
from gateway_core.context import GatewayRequest

log = logging.getLogger("aigw")


def config_from_app_settings(app_root: Path) -> GatewayConfig:
    """``AIGW_CONFIG`` (a path, relative to the app root) or zero-config from the app settings."""
    path = os.environ.get("AIGW_CONFIG")
    if path and not Path(path).is_absolute():
        path = str(app_root / path)
    return load_config(path or None)


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
        """The timer trigger's work: probe every backend and share what was learned through the health store."""
        gateway = await self.gateway()
        states = await gateway.prober.probe_all()
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
        early = await gateway.check_head(head)  # 401/404 before the body is read
        if early is not None:
            return Response(early.body, status_code=early.status, headers=dict(early.headers))
        body, size = await read_limited(request.stream(), headers.get("content-length", ""), server.max_body_bytes)
        result = await gateway.handle(dataclasses.replace(head, body=body, body_size=size))
        out_headers = dict(result.headers)
        if result.stream is not None:
            return StreamingResponse(result.stream, status_code=result.status, headers=out_headers)
        return Response(result.body, status_code=result.status, headers=out_headers)
