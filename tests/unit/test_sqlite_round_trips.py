"""The SQLite stores' thread: how results come back to the event loop, and the round trips a request makes
with every policy on (counted, not timed)."""

from __future__ import annotations

import asyncio
import threading
from pathlib import Path
from typing import Any

from gateway_core.storage.sqlite import SqliteCounters


async def test_jobs_queued_meanwhile_come_back_in_one_wake_up_of_the_loop(tmp_path: Path) -> None:
    counters = SqliteCounters(tmp_path / "counters.db")
    await counters.start()
    loop = asyncio.get_running_loop()
    wake_ups = 0
    real = loop.call_soon_threadsafe

    def counted(*args: Any, **kwargs: Any) -> Any:
        nonlocal wake_ups
        wake_ups += 1
        return real(*args, **kwargs)

    gate = threading.Event()
    loop.call_soon_threadsafe = counted  # type: ignore[method-assign,assignment]
    try:
        first = loop.create_task(counters._db.run(lambda conn: gate.wait(10)))  # holds the thread
        adds = [loop.create_task(counters.add("k", 1, 1, 60)) for _ in range(31)]
        await asyncio.sleep(0)  # every task has queued its job
        gate.set()
        totals = await asyncio.gather(*adds)
        await first
    finally:
        del loop.call_soon_threadsafe
        await counters.close()
    assert sorted(totals) == list(range(1, 32))
    assert wake_ups <= 2  # was 32: one per job
