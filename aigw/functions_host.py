"""The Azure Functions side of the gateway: Starlette request in (HTTP streaming extension), response out.

The Functions worker gives async triggers one event loop; the ``Gateway`` is built on the first request in
that loop (no network I/O at import time) and rebuilt only if a different loop shows up (in-process tests).
"""

from __future__ import annotations

import asyncio
import os
from pathlib import Path

from starlette.requests import Request
from starlette.responses import Response, StreamingResponse

from aigw.bodies import read_limited
from gateway_core.app import Gateway
from gateway_core.config import GatewayConfig, load_config
from gateway_core.context import GatewayRequest


def config_from_app_settings(app_root: Path) -> GatewayConfig:
    """``AIGW_CONFIG`` (a path, relative to the app root) or zero-config from the app settings."""
    path = os.environ.get("AIGW_CONFIG")
    if path and not Path(path).is_absolute():
        path = str(app_root / path)
    return load_config(path or None)


class FunctionsHost:
    def __init__(self, app_root: Path) -> None:
        self._app_root = app_root
        self._gateway: Gateway | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._lock = asyncio.Lock()

    async def gateway(self) -> Gateway:
        loop = asyncio.get_running_loop()
        if self._gateway is not None and self._loop is loop:
            return self._gateway
        async with self._lock:
            if self._gateway is None or self._loop is not loop:
                gateway = Gateway(config_from_app_settings(self._app_root))
                await gateway.start()
                self._gateway, self._loop = gateway, loop
        return self._gateway

    async def close(self) -> None:
        """Close the gateway's connections (worker shutdown, and the end of each in-process test)."""
        if self._gateway is not None:
            await self._gateway.close()
            self._gateway, self._loop = None, None

    async def check_health(self) -> dict[str, str]:
        """The timer trigger's work: probe every backend and share what was learned through the health store."""
        gateway = await self.gateway()
        states = await gateway.prober.probe_all()
        await gateway.sync_health()
        return states

    async def handle(self, request: Request) -> Response:
        gateway = await self.gateway()
        limit = gateway.config.server.max_body_bytes
        headers = {k.lower(): v for k, v in request.headers.items()}
        body, size = await read_limited(request.stream(), headers.get("content-length", ""), limit)
        result = await gateway.handle(
            GatewayRequest(
                method=request.method,
                path=request.url.path,
                query=dict(request.query_params),
                headers=headers,
                body=body,
                body_size=size,
                client_ip=request.client.host if request.client else "",
            )
        )
        out_headers = dict(result.headers)
        if result.stream is not None:
            return StreamingResponse(result.stream, status_code=result.status, headers=out_headers)
        return Response(result.body, status_code=result.status, headers=out_headers)
