"""A usage sink that keeps records in a list, for tests (the real one batches them to a store)."""

from __future__ import annotations

import threading

from gateway_core.usage.record import UsageRecord


class ListSink:
    def __init__(self) -> None:
        self.records: list[UsageRecord] = []
        self.flushes = 0
        self.closed = False
        self._changed = threading.Condition()

    def record(self, record: UsageRecord) -> None:
        with self._changed:
            self.records.append(record)
            self._changed.notify_all()

    async def flush(self) -> None:
        self.flushes += 1

    async def close(self) -> None:
        self.closed = True

    def wait_for(self, count: int, timeout_s: float = 20.0) -> list[UsageRecord]:
        """The records once there are ``count`` (for a gateway served from another thread); blocks this thread."""
        with self._changed:
            self._changed.wait_for(lambda: len(self.records) >= count, timeout_s)
            return list(self.records)
