"""Running ASGI apps with uvicorn: the gateway (one or more workers) and simulators (in-process, for the demo).

We bind the listening sockets ourselves and set TCP_NODELAY on them (accepted connections inherit it): with
several workers uvicorn does not, and small responses then wait ~40 ms on delayed ACKs (measured: ~44 ms
added per keep-alive request at c1 with 2 workers, 0.2 ms with TCP_NODELAY).
Each worker gets its own SO_REUSEPORT socket on the one port, so the kernel spreads new connections evenly
over the workers; with one shared socket, whichever worker woke first took them, and a benchmark run could
land most of its keep-alive connections on one worker (bench/README.md).
SO_REUSEPORT lets any process of the same user join the port, and a second `aigw serve` on it would start and
take half the connections: the port must be free before the workers' sockets are bound, and on Linux no other
socket may be listening on it once they are (``_check_port_is_ours``). Workers end with their supervisor
(aigw/worker.py), so a supervisor killed with SIGKILL leaves none serving.
"""

from __future__ import annotations

import asyncio
import errno
import ipaddress
import math
import os
import socket
import sys
import threading
from collections.abc import Coroutine
from typing import Any, TypeVar

import orjson
import uvicorn
from uvicorn.config import STARTUP_FAILURE
from uvicorn.supervisors.multiprocess import Multiprocess, logger

from gateway_core.app import Gateway
from gateway_core.config import ServerSettings

from .asgi import CONFIG_ENV, GatewayASGI
from .client_address import networks
from .connections import ConnectionCaps, default_max_connections
from .protocol import GatewayServerConfig, HeadTimeoutProtocol
from .worker import Worker

T = TypeVar("T")


def bind(host: str, port: int, *, reuse_port: bool = False) -> socket.socket:
    sock = socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    if reuse_port:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    sock.bind((host, port))
    sock.listen(2048)
    sock.set_inheritable(True)
    return sock


def bind_workers(host: str, port: int, workers: int) -> list[socket.socket]:
    """One listening socket per worker, all on one port (the first one's, when ``port`` is 0)."""
    if workers <= 1:
        return [bind(host, port)]
    if port:
        bind(host, port).close()  # no SO_REUSEPORT: fails (EADDRINUSE) while anything listens on the port
    sockets = [bind(host, port, reuse_port=True)]
    port = int(sockets[0].getsockname()[1])
    try:
        sockets.extend(bind(host, port, reuse_port=True) for _ in range(workers - 1))
        _check_port_is_ours(sockets)
    except OSError:
        for sock in sockets:
            sock.close()
        raise
    return sockets


def _check_port_is_ours(sockets: list[socket.socket]) -> None:
    """Raise EADDRINUSE if a socket other than ``sockets`` listens on their address and port (Linux; elsewhere
    nothing is checked). Another process may have joined between the free-port check and our binds."""
    host, port = sockets[0].getsockname()[:2]
    ours = {os.fstat(sock.fileno()).st_ino for sock in sockets}
    ours_address = _unmapped(host)
    for address, inode in _listening(int(port)):
        if inode not in ours and (address == ours_address or address.is_unspecified or ours_address.is_unspecified):
            raise OSError(errno.EADDRINUSE, f"{os.strerror(errno.EADDRINUSE)} (another process listens on it)")


def _listening(port: int) -> list[tuple[ipaddress.IPv4Address | ipaddress.IPv6Address, int]]:
    """(address, socket inode) of each TCP socket listening on ``port``, from /proc/net/tcp and tcp6."""
    found = []
    for table, family in (("/proc/net/tcp", socket.AF_INET), ("/proc/net/tcp6", socket.AF_INET6)):
        try:
            with open(table, encoding="ascii") as rows:
                next(rows, None)  # the column names
                for row in rows:
                    fields = row.split()
                    address, _, hex_port = fields[1].partition(":")
                    if fields[3] == "0A" and int(hex_port, 16) == port:  # 0A: LISTEN
                        found.append((_unmapped(socket.inet_ntop(family, _address_bytes(address))), int(fields[9])))
        except OSError:
            continue
    return found


def _address_bytes(text: str) -> bytes:
    # The kernel prints the address as 32-bit words in host byte order.
    step = -1 if sys.byteorder == "little" else 1
    return b"".join(bytes.fromhex(text[i : i + 8])[::step] for i in range(0, len(text), 8))


def _unmapped(host: str) -> ipaddress.IPv4Address | ipaddress.IPv6Address:
    address = ipaddress.ip_address(host)
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        return address.ipv4_mapped
    return address


def _uvicorn_config(
    app: Any, *, workers: int, log_level: str, factory: bool = False, server: ServerSettings | None = None
) -> uvicorn.Config:
    # Connections are capped for the gateway only: the demo's simulated backends take all of its upstream
    # connections from one address.
    caps = None
    if server is not None:
        total = server.max_connections or default_max_connections()
        caps = ConnectionCaps(
            per_peer=server.max_connections_per_peer, total=total, trusted=networks(server.trusted_proxies)
        )
    server = server or ServerSettings()
    return GatewayServerConfig(
        app,
        header_timeout_s=server.header_timeout_s,
        max_head_bytes=server.max_head_bytes,
        max_target_bytes=server.max_target_bytes,
        write_timeout_s=server.write_timeout_s,
        caps=caps,
        factory=factory,
        workers=workers,
        loop="uvloop",
        http=HeadTimeoutProtocol,
        lifespan="on",
        log_level=log_level,
        access_log=False,
        server_header=False,
        date_header=False,
        timeout_graceful_shutdown=10,
        timeout_keep_alive=max(1, math.ceil(server.keep_alive_s)),  # uvicorn takes whole seconds
        # The client address is the peer's unless server.trusted_proxies says otherwise (aigw/client_address.py);
        # uvicorn would otherwise believe X-Forwarded-For from any loopback peer.
        proxy_headers=False,
    )


def run_gateway(
    gateway: Gateway, sockets: list[socket.socket], *, workers: int = 1, log_level: str = "warning"
) -> None:
    """Serve ``gateway`` on ``sockets`` (one per worker, see ``bind_workers``) until interrupted; blocks.

    With one worker this process serves ``gateway`` itself (started and closed by the ASGI lifespan). With
    several, each worker process builds its own from ``gateway.config``, and this one, never started, is closed.
    """
    config = gateway.config
    if workers <= 1:
        app = GatewayASGI(gateway)
        server = uvicorn.Server(_uvicorn_config(app, workers=1, log_level=log_level, server=config.server))
        server.run(sockets=sockets)
        return
    asyncio.run(gateway.close())
    payload = config.model_dump(mode="json")
    payload["no_auth"] = config.no_auth
    os.environ[CONFIG_ENV] = orjson.dumps(payload).decode()
    uv_config = _uvicorn_config(
        "aigw.asgi:create_app", workers=workers, log_level=log_level, factory=True, server=config.server
    )
    _SocketPerWorker(uv_config, sockets).run()


class _SocketPerWorker(Multiprocess):
    """uvicorn's supervisor, except that worker ``i`` (and any replacement of it) listens on ``sockets[i]``.

    The worker count is fixed by the sockets, so SIGHUP (restart), SIGTTIN and SIGTTOU (resize) are ignored.
    """

    def __init__(self, config: uvicorn.Config, sockets: list[socket.socket]) -> None:
        super().__init__(config, sockets)
        self._own = sockets

    def init_processes(self) -> None:
        for sock in self._own:
            process = Worker(self.config, [sock])
            process.start()
            self.processes.append(process)

    def keep_subprocess_alive(self) -> None:
        if self.should_exit.is_set():
            return
        for idx, process in enumerate(self.processes):
            if process.is_alive(timeout=self.config.timeout_worker_healthcheck):
                continue
            process.kill()
            process.join()
            if process.exitcode == STARTUP_FAILURE:
                logger.error(f"Child process [{process.pid}] failed to start, stopping the parent process.")
                self.should_exit.set()
                return
            if self.should_exit.is_set():
                return
            logger.info(f"Child process [{process.pid}] died")
            replacement = Worker(self.config, [self._own[idx]])
            replacement.start()
            self.processes[idx] = replacement

    def handle_hup(self) -> None:
        logger.info("SIGHUP ignored: restart the gateway to restart its workers")

    def handle_ttin(self) -> None:
        logger.info("SIGTTIN ignored: the number of workers is fixed by --workers")

    def handle_ttou(self) -> None:
        logger.info("SIGTTOU ignored: the number of workers is fixed by --workers")


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

    def run(self, work: Coroutine[Any, Any, T]) -> T:
        """Run ``work`` on the servers' event loop and wait for it (start or close an app served there)."""
        return asyncio.run_coroutine_threadsafe(work, self._loop).result(timeout=30)

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
