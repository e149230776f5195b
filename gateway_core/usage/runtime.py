"""The usage parts of one gateway: the store, its queue, the batched writer (the default sink) and the
summariser, started and closed together in the right order."""

from __future__ import annotations

import asyncio
import contextlib
import logging

from ..config import UsageSettings
from ..storage.ports import StorageError, UsageQueue, UsageStore
from .summariser import Summariser
from .writer import UsageWriter, usage_sink_for

log = logging.getLogger("aigw")


class UsageRuntime:
    def __init__(self, store: UsageStore, queue: UsageQueue, settings: UsageSettings) -> None:
        self.store = store
        self.queue = queue
        self.writer: UsageWriter = usage_sink_for(store, queue, settings)
        self.summariser = Summariser(store, queue, settings)
        self._consumer: asyncio.Task[None] | None = None
        self._background = False

    async def start(self, *, background: bool) -> None:
        """Connect; with ``background`` (`aigw serve`), write and summarise in background tasks. Without it
        (the Functions app), the host calls ``writer.flush()`` and the triggers call the summariser."""
        try:
            await self.store.start()
            await self.queue.start()
        except StorageError as exc:
            log.error("usage store unreachable at start, records are buffered and spilled until it answers: %s", exc)
        self._background = background
        if background:
            self.writer.start()
            self._consumer = asyncio.get_running_loop().create_task(self.summariser.run_forever())

    async def close(self) -> None:
        """Flush the writer, summarise what it enqueued (in-process queue: its messages die with us), then close
        the queue and the store."""
        if self._consumer is not None:
            self._consumer.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._consumer
        await self.writer.close()
        if self._background:
            await self._drain_queue()
        await self.queue.close()
        await self.store.close()

    async def _drain_queue(self) -> None:
        try:
            while messages := await self.queue.receive(16, 30.0):
                for message in messages:
                    await self.summariser.handle(message)
                    if message.dequeue_count > 1:
                        return  # redelivered ones wait for the next start's sweep rather than spin here
        except StorageError as exc:
            log.warning("usage queue unreachable at shutdown, the next start's sweep summarises: %s", exc)
