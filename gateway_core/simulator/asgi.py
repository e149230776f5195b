"""The simulator's ASGI plumbing: the types, reading a request body, and noticing a client that leaves.

Kept apart so that the modules deciding what to answer never see ASGI messages: they return a `SimReply`
(reply.py), and only reply.py and sse.py put bytes on the wire.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Awaitable, Callable, MutableMapping
from typing import Any

from .records import RequestRecord

Scope = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[MutableMapping[str, Any]]]
Send = Callable[[MutableMapping[str, Any]], Awaitable[None]]


class Dropped(Exception):
    """Raised after a partial response: the server then aborts the connection, as a crashed backend would."""


class Watch:
    """Notices a client that hangs up mid-answer, so the simulator stops as a real backend would.

    It writes the outcome (``completed`` or ``client_disconnected``) into the request's record, where tests
    look for it.
    """

    def __init__(self, receive: Receive, record: RequestRecord) -> None:
        self._receive = receive
        self.record = record
        self.disconnected = False
        self._gone = asyncio.Event()
        self._task: asyncio.Task[None] | None = None

    async def _wait(self) -> None:
        while (await self._receive())["type"] != "http.disconnect":
            pass
        self.disconnected = True
        self._gone.set()

    async def sleep(self, seconds: float) -> bool:
        """Wait ``seconds`` (inside ``async with``); False if the client hung up meanwhile."""
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._gone.wait(), seconds)
        return not self.disconnected

    async def __aenter__(self) -> Watch:
        self._task = asyncio.ensure_future(self._wait())
        return self

    async def __aexit__(self, *exc: object) -> None:
        if self._task is None:
            return
        self._task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await self._task


async def read_body(receive: Receive) -> bytes:
    chunks = []
    while True:
        message = await receive()
        chunks.append(message.get("body", b""))
        if not message.get("more_body", False):
            return b"".join(chunks)
