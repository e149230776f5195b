"""The summariser: turns a written batch of usage records into summary rows, exactly once.

The same code runs in `aigw serve` (a consumer loop over the in-process queue, plus a periodic sweep) and in
the Functions app (the queue trigger calls ``process`` with one message's batch id; the timer trigger calls
``sweep``). ``absorb`` is atomic per (batch, day) in the store, so a message delivered twice, out of order or
concurrently with another never double-counts, and the sweep re-processing a batch a message also names is
harmless.

On SQLite none of this is on the path: the writer stores each batch with its summary rows in one transaction
(``write_summarised``) and sends no message, so the consumer loop receives nothing and the sweep only finds
batches an older version left pending.
"""

from __future__ import annotations

import asyncio
import logging
import re
import time

from ..config import UsageSettings
from ..storage.ports import StorageError, UsageQueue, UsageStore
from .record import QueueMessage, summarise_by_day

log = logging.getLogger("aigw")
_BATCH_ID = re.compile(r"^[A-Za-z0-9._:\-]{1,128}$")
_RECEIVE_MAX = 16
_IDLE_MIN_S = 0.05
_IDLE_MAX_S = 1.0  # an empty queue is polled at most this far apart (an in-process receive costs nothing)


def is_batch_id(body: str) -> bool:
    """Whether a queue message's body can name a batch (the writer's ids are 32 hex characters)."""
    return _BATCH_ID.fullmatch(body) is not None


class BatchNotFound(LookupError):
    """A message named a batch the store does not hold (yet): retry the message later."""


class Summariser:
    def __init__(self, store: UsageStore, queue: UsageQueue, settings: UsageSettings) -> None:
        self._store = store
        self._queue = queue
        self._settings = settings
        self.processed = 0  # batches summarised by this instance (including ones found already absorbed)

    async def process(self, batch_id: str) -> None:
        """Absorb batch ``batch_id`` into the summaries (once per day it spans) and mark it finished.

        Raises ``BatchNotFound`` if no such batch was written (yet), ``StorageError`` if the store failed: in
        both cases the message should be delivered again.
        """
        records = await self._store.batch_records(batch_id)
        if records is None:
            raise BatchNotFound(f"usage batch {batch_id!r} was not found in the usage store")
        for day, rows in sorted(summarise_by_day(records).items()):
            await self._store.absorb(batch_id, day, rows)
        await self._store.finish_batch(batch_id)
        self.processed += 1

    async def handle(self, message: QueueMessage) -> None:
        """Process one message: delete it when done; leave it for redelivery when its batch is missing or the
        store failed; after ``max_dequeues`` deliveries (or a body that is no batch id), poison it with why."""
        batch_id = message.body
        if not is_batch_id(batch_id):
            await self._queue.poison(message, "the message is not a usage batch id")
            log.error("usage queue: poisoned a message that is not a batch id")
            return
        try:
            await self.process(batch_id)
        except (BatchNotFound, StorageError) as exc:
            if message.dequeue_count >= self._settings.max_dequeues:
                reason = f"{exc} (after {message.dequeue_count} deliveries)"
                await self._queue.poison(message, reason)
                log.error("usage queue: poisoned batch %s: %s", batch_id, reason)
            else:
                log.info("usage batch %s not summarised yet (delivery %d): %s", batch_id, message.dequeue_count, exc)
            return
        await self._queue.delete(message)

    async def sweep(self, older_than_s: float) -> int:
        """Summarise the batches written more than ``older_than_s`` ago and still pending (their message was
        lost, poisoned, or died with its process). Returns how many it summarised; a failure is logged."""
        done = 0
        try:
            pending = await self._store.pending_batches(time.time() - older_than_s)
        except StorageError as exc:
            log.warning("usage sweep: the store is unreachable: %s", exc)
            return 0
        for batch_id in pending:
            try:
                await self.process(batch_id)
            except (BatchNotFound, StorageError) as exc:
                log.warning("usage sweep: batch %s not summarised: %s", batch_id, exc)
                continue
            done += 1
        if done:
            log.info("usage sweep: summarised %d pending batches", done)
        return done

    async def run_forever(self) -> None:
        """`aigw serve`: receive, process, delete; sweep at start and every ``sweep_interval_s``."""
        await self.sweep(0.0)  # batches a previous run wrote and never summarised (a hard kill)
        next_sweep_s = time.monotonic() + self._settings.sweep_interval_s
        idle_s = _IDLE_MIN_S
        while True:
            messages = []
            try:
                if time.monotonic() >= next_sweep_s:
                    next_sweep_s = time.monotonic() + self._settings.sweep_interval_s
                    await self.sweep(self._settings.sweep_older_than_s)
                messages = await self._queue.receive(_RECEIVE_MAX, self._settings.visibility_timeout_s)
                for message in messages:
                    await self.handle(message)
            except StorageError as exc:
                log.warning("usage queue unreachable: %s", exc)
            except Exception:  # keep consuming: one bad step must not stop summaries for good
                log.exception("usage consumer step failed")
            if messages:
                idle_s = _IDLE_MIN_S
                continue
            await asyncio.sleep(idle_s)
            idle_s = min(idle_s * 2, _IDLE_MAX_S)
