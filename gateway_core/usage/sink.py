"""Where the pipeline hands finished usage records: a sink that never blocks the request and never raises."""

from __future__ import annotations

from typing import Protocol

from .record import UsageRecord


class UsageSink(Protocol):
    def record(self, record: UsageRecord) -> None:
        """Take ``record`` for writing. Returns at once (buffered); never raises (a failure is the sink's to
        retry, spill or log)."""
        ...

    async def flush(self) -> None:
        """Write everything taken so far before returning (the Functions host calls this before an invocation
        ends, since a frozen instance runs no background work; ``aigw serve`` flushes in the background)."""
        ...

    async def close(self) -> None:
        """Flush, then stop: nothing taken is lost (what cannot reach the store is spilled to a local file)."""
        ...
