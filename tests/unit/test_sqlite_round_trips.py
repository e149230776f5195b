"""The SQLite stores' thread: how results come back to the event loop, and the round trips a request makes
with every policy on (counted, not timed)."""

from __future__ import annotations

import asyncio
import dataclasses
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from gateway_core.storage import sqlite, sqlite_cache
from gateway_core.storage.ports import CacheEntry
from gateway_core.storage.sqlite import SqliteCounters
from gateway_core.storage.sqlite_cache import SqliteCache


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


NOW = 1_795_000_000.0
ENTRY = CacheEntry("key", "bucket", b'{"id": "x"}', NOW, NOW + 60, 5, 7)


async def test_a_put_rides_on_the_next_lookup(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(sqlite_cache, "_PUT_RIDE_AFTER_S", 0.0)  # due at once (see the test below)
    cache = SqliteCache(tmp_path / "cache.db")
    await cache.start()
    trips = 0
    real = sqlite._SqliteThread.submit

    def submit(self: sqlite._SqliteThread, fn: Callable[[Any], Any]) -> Any:
        nonlocal trips
        trips += 1
        return real(self, fn)

    monkeypatch.setattr(sqlite._SqliteThread, "submit", submit)
    try:
        put = asyncio.ensure_future(cache.put(ENTRY))
        await asyncio.sleep(0)  # queued, waiting for a lookup to carry it
        assert await cache.get("bucket", "other", NOW + 1) is None
        await put
        assert trips == 1  # was 2: the put's own, then the lookup's
        assert await cache.get("bucket", "key", NOW + 1) == ENTRY  # written before any later job
    finally:
        await cache.close()


async def test_puts_of_requests_one_at_a_time_share_one_write(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # One request at a time, each lookup carried the one put before it: a write transaction per request. A put
    # now rides only once the oldest queued has waited _PUT_RIDE_AFTER_S (long here: none is due meanwhile).
    monkeypatch.setattr(sqlite_cache, "_PUT_RIDE_AFTER_S", 60.0, raising=False)
    monkeypatch.setattr(sqlite_cache, "_PUT_DEFER_S", 60.0)
    cache = SqliteCache(tmp_path / "cache.db")
    await cache.start()
    writes: list[int] = []
    real = SqliteCache._write

    def write(self: SqliteCache, conn: Any, *, entries: list[CacheEntry]) -> None:
        writes.append(len(entries))
        real(self, conn, entries=entries)

    monkeypatch.setattr(SqliteCache, "_write", write)
    entries = [dataclasses.replace(ENTRY, key=f"key-{i}") for i in range(3)]
    puts = []
    try:
        for entry in entries:
            puts.append(asyncio.ensure_future(cache.put(entry)))
            await asyncio.sleep(0)  # queued
            assert await cache.get("bucket", f"other-{entry.key}", NOW + 1) is None  # the next request's lookup
            assert await cache.get("bucket", entry.key, NOW + 1) == entry  # answered from the queue
    finally:
        await cache.close()  # writes what is queued
    await asyncio.gather(*puts)
    assert writes == [3]  # was [1, 1, 1]
    again = SqliteCache(tmp_path / "cache.db")
    try:
        for entry in entries:
            assert await again.get("bucket", entry.key, NOW + 1) == entry
    finally:
        await again.close()


async def test_a_put_waiting_for_a_lookup_is_written_at_close(tmp_path: Path) -> None:
    cache = SqliteCache(tmp_path / "cache.db")
    await cache.start()
    put = asyncio.ensure_future(cache.put(ENTRY))
    await asyncio.sleep(0)
    await cache.close()
    await put
    again = SqliteCache(tmp_path / "cache.db")
    try:
        assert await again.get("bucket", "key", NOW + 1) == ENTRY
    finally:
        await again.close()


async def test_a_put_waiting_for_a_trip_answers_a_lookup_of_its_key(tmp_path: Path) -> None:
    # A client's next identical request, sent as soon as the answer came, is a hit (the e2e accounting test).
    cache = SqliteCache(tmp_path / "cache.db")
    await cache.start()
    try:
        put = asyncio.ensure_future(cache.put(ENTRY))
        await asyncio.sleep(0)
        assert await cache.get("bucket", "key", NOW + 1) == ENTRY
        assert await cache.get("bucket", "key", NOW + 61) is None  # expired
        await put
    finally:
        await cache.close()
