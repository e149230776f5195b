"""Running ASGI apps with uvicorn: the gateway (one or more workers) and simulators (in-process, for the demo).

We bind the listening socket ourselves and set TCP_NODELAY on it before uvicorn's workers inherit it:
with several workers uvicorn does not, and small responses then wait ~40 ms on delayed ACKs (PITFALLS.md).
"""

from __future__ import annotations

import asyncio
import os
import socket
import threading
from typing import Any

import orjson
import uvicorn
from uvicorn.supervisors import Multiprocess

from gateway_core.config import GatewayConfig

from .asgi import CONFIG_ENV, GatewayASGI


def bind(host: str, port: int) -> socket.socket:
    sock = socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    sock.bind((host, port))
    sock.listen(2048)
    sock.set_inheritable(True)
    return sock


def _uvicorn_config(app: Any, *, workers: int, log_level: str, factory: bool = False) -> uvicorn.Config:
    return uvicorn.Config(
        app,
        factory=factory,
        workers=workers,
        loop="uvloop",
        http="httptools",
        lifespan="on",
        log_level=log_level,
        access_log=False,
        server_header=False,
        date_header=False,
        timeout_graceful_shutdown=10,
    )


def run_gateway(config: GatewayConfig, sock: socket.socket, *, workers: int = 1, log_level: str = "warning") -> None:
    """Serve the gateway on ``sock`` until interrupted; blocks."""
    if workers <= 1:
        from gateway_core.app import Gateway

        gateway = Gateway(config, background_probes=True)
        server = uvicorn.Server(_uvicorn_config(GatewayASGI(gateway), workers=1, log_level=log_level))
        server.run(sockets=[sock])
        return
    payload = config.model_dump(mode="json")
    payload["no_auth"] = config.no_auth
    os.environ[CONFIG_ENV] = orjson.dumps(payload).decode()
    uv_config = _uvicorn_config("aigw.asgi:create_app", workers=workers, log_level=log_level, factory=True)
    Multiprocess(uv_config, sockets=[sock]).run()


class BackgroundServers:
    """ASGI apps served by uvicorn on one event loop in a daemon thread (the demo's simulated backends)."""

    def __init__(self) -> None:
        self._loop = asyncio.new_event_loop()
        self._servers: list[uvicorn.Server] = []
        self._thread = threading.Thread(target=self._loop.run_forever, name="aigw-sim", daemon=True)
        self._thread.start()

    def serve(self, app: Any, host: str = "127.0.0.1", port: int = 0) -> int:
        """Start serving ``app``; returns the port once it accepts connections."""
        sock = bind(host, port)
        server = uvicorn.Server(_uvicorn_config(app, workers=1, log_level="warning"))
        server.config.lifespan = "off"
        self._servers.append(server)
        started = asyncio.run_coroutine_threadsafe(self._start(server, sock), self._loop)
        started.result(timeout=10)
        return int(sock.getsockname()[1])

    @staticmethod
    async def _start(server: uvicorn.Server, sock: socket.socket) -> None:
        config = server.config
        if not config.loaded:
            config.load()
        server.lifespan = config.lifespan_class(config)
        await server.startup(sockets=[sock])

    def stop(self) -> None:
        async def shutdown() -> None:
            for server in self._servers:
                await server.shutdown()

        asyncio.run_coroutine_threadsafe(shutdown(), self._loop).result(timeout=10)
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(timeout=5)
