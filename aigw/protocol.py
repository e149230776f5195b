"""uvicorn's httptools protocol with a deadline for the request head.

uvicorn closes idle keep-alive connections (``timeout_keep_alive``) but has no limit on how long a client may
take to send a request head, so a client that connects and sends nothing, or a few header bytes now and then,
holds a descriptor (and a slot in the kernel's accept queue) forever. Here a timer starts when the connection
opens or the next request's first byte arrives, and the connection is closed unless the whole head arrived
within ``header_timeout_s``. The body has its own timeout, in the ASGI adapter (it can answer 408 there).
"""

from __future__ import annotations

import asyncio
from typing import Any

import uvicorn
from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol


class GatewayServerConfig(uvicorn.Config):
    """uvicorn's config plus what the protocol reads. It is pickled to each worker process, which imports this
    module to unpickle it before it starts answering the supervisor's health pings: keep the imports light."""

    def __init__(self, app: Any, *, header_timeout_s: float, **kwargs: Any) -> None:
        super().__init__(app, **kwargs)
        self.header_timeout_s = header_timeout_s


class HeadTimeoutProtocol(HttpToolsProtocol):
    def __init__(self, config: Any, *args: Any, **kwargs: Any) -> None:
        super().__init__(config, *args, **kwargs)
        self._head_timeout_s: float = getattr(config, "header_timeout_s", 10.0)
        self._head_timer: asyncio.TimerHandle | None = None

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        self._arm()

    def connection_lost(self, exc: Exception | None) -> None:
        self._disarm()
        super().connection_lost(exc)

    def on_message_begin(self) -> None:
        super().on_message_begin()
        if self._head_timer is None:  # armed since the connection opened: the first head has the rest of it
            self._arm()

    def on_headers_complete(self) -> None:
        self._disarm()
        super().on_headers_complete()

    def _arm(self) -> None:
        self._head_timer = self.loop.call_later(self._head_timeout_s, self._head_expired)

    def _disarm(self) -> None:
        if self._head_timer is not None:
            self._head_timer.cancel()
            self._head_timer = None

    def _head_expired(self) -> None:
        self._head_timer = None
        if not self.transport.is_closing():
            self.transport.close()
