"""Counter adds made after responses (settlements, fail-open counts), coalesced into one ``add_many`` per flush.

Adds to the same counter (key, window) are summed while they wait, so at 32 concurrent requests on one rule a
flush is one round trip of a few items instead of one round trip per request and rule. A flush runs
``interval_s`` after the first add it carries, or at once when ``max_items`` counters wait; it is a background
task, so ``BackgroundTasks.drain`` (at shutdown) waits for it and nothing queued is lost.
"""

from __future__ import annotations

import asyncio
import logging

from ..background import BackgroundTasks
from ..storage.ports import CounterAdd, CounterStore, StorageError

log = logging.getLogger("aigw")


class Settlements:
    def __init__(
        self, store: CounterStore, tasks: BackgroundTasks, interval_s: float = 0.02, max_items: int = 256
    ) -> None:
        self._store = store
        self._tasks = tasks
        self._interval_s = interval_s
        self._max_items = max_items
        self._waiting: dict[tuple[str, int], CounterAdd] = {}
        self._timer = False  # a flush is scheduled for what waits

    def add(self, key: str, window: int, amount: int, ttl_s: int) -> None:
        """Queue ``amount`` for the counter; never raises, never waits."""
        if not amount:
            return
        queued = self._waiting.get((key, window))
        if queued is not None:
            amount += queued.amount
            ttl_s = max(ttl_s, queued.ttl_s)
        self._waiting[(key, window)] = CounterAdd(key, window, amount, ttl_s)
        if len(self._waiting) >= self._max_items:
            self._tasks.spawn(self.flush(), "settle token counts")
        elif not self._timer:
            self._timer = True
            self._tasks.spawn(self._flush_later(), "settle token counts")

    async def _flush_later(self) -> None:
        try:
            await asyncio.sleep(self._interval_s)
        finally:
            self._timer = False
        await self.flush()

    async def flush(self) -> None:
        """Write what waits now, in one round trip; if the store fails, those counts are lost (logged)."""
        adds = [add for add in self._waiting.values() if add.amount]
        self._waiting = {}
        if not adds:
            return
        try:
            await self._store.add_many(adds)
        except StorageError as exc:
            log.warning("token counts not settled (%d counters), the store failed: %s", len(adds), exc)
