"""One contract for every cache adapter, each against its real server."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from gateway_core.cache.vectors import normalise
from gateway_core.storage.factory import cache_store
from gateway_core.storage.ports import CacheEntry, CacheStore
from gateway_core.storage.sqlite_cache import SqliteCache
from tests.contract.conftest import ADAPTERS, store_url
from tests.servers import COSMOS_KEY_ENV

NOW = 1_800_000_000.0


@pytest.fixture(params=ADAPTERS["cache"])
async def store(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[CacheStore]:
    adapter = cache_store(store_url(request.param, "cache", tmp_path, request), COSMOS_KEY_ENV)
    await adapter.start()
    yield adapter
    await adapter.close()


def entry(key: str, bucket: str = "b1", ttl_s: float = 60, vector: tuple[float, ...] | None = None) -> CacheEntry:
    return CacheEntry(
        key=key,
        bucket=bucket,
        body=b'{"answer": "' + key.encode() + b'"}',
        created_s=NOW,
        expires_s=NOW + ttl_s,
        prompt_tokens=11,
        completion_tokens=7,
        vector=vector,
    )


async def test_put_get_and_replace(store: CacheStore) -> None:
    assert await store.get("b1", "k1", NOW) is None
    await store.put(entry("k1"))
    got = await store.get("b1", "k1", NOW + 1)
    assert got is not None and got.body == b'{"answer": "k1"}'
    assert (got.prompt_tokens, got.completion_tokens, got.created_s) == (11, 7, NOW)
    await store.put(CacheEntry("k1", "b1", b"{}", NOW + 5, NOW + 100))
    replaced = await store.get("b1", "k1", NOW + 6)
    assert replaced is not None and replaced.body == b"{}"


async def test_entries_expire_and_buckets_are_separate(store: CacheStore) -> None:
    await store.put(entry("k2", ttl_s=10))
    assert await store.get("b1", "k2", NOW + 9) is not None
    assert await store.get("b1", "k2", NOW + 10) is None  # expiry by stored time, whether or not the server has TTL
    assert await store.get("other-bucket", "k2", NOW) is None


async def test_nearest_finds_the_most_similar_unexpired_vector_in_the_bucket(store: CacheStore) -> None:
    assert await store.nearest("sem", normalise((1.0, 0.0, 0.0)), NOW) is None
    await store.put(entry("x", "sem", vector=normalise((1.0, 0.0, 0.0))))
    await store.put(entry("xy", "sem", vector=normalise((1.0, 1.0, 0.0))))
    await store.put(entry("old", "sem", ttl_s=1, vector=normalise((0.0, 0.0, 1.0))))
    await store.put(entry("elsewhere", "other", vector=normalise((0.9, 0.1, 0.0))))
    found = await store.nearest("sem", normalise((0.95, 0.1, 0.0)), NOW + 5)
    assert found is not None
    assert found[0].key == "x" and found[1] == pytest.approx(0.9945, abs=1e-3)
    expired = await store.nearest("sem", normalise((0.0, 0.0, 1.0)), NOW + 5)
    assert expired is not None and expired[0].key != "old"


async def test_sqlite_evicts_least_recently_used_past_its_budget(tmp_path: Path) -> None:
    adapter = cache_store(f"sqlite:///{tmp_path}/small.db", max_bytes=5000)
    body = b"x" * 1000
    for i in range(20):
        await adapter.put(CacheEntry(f"k{i}", "b", body, NOW + i, NOW + 3600))
        if i == 0:
            assert await adapter.get("b", "k0", NOW + 100) is not None  # k0 touched: the most recently used
    await adapter.put(CacheEntry("last", "b", body, NOW + 30, NOW + 3600))
    kept = [i for i in range(20) if await adapter.get("b", f"k{i}", NOW + 31) is not None]
    assert len(kept) <= 4  # about 1,200 bytes an entry against a 5,000-byte budget
    assert 0 in kept  # used most recently, so evicted last
    assert await adapter.get("b", "last", NOW + 31) is not None
    await adapter.close()


def spread(i: int, dims: int = 8) -> tuple[float, ...]:
    """A distinct unit vector for each ``i``."""
    return normalise(tuple(float((i * 7 + d * 3) % 11 + 1) for d in range(dims)))


async def test_sqlite_semantic_index_lets_expired_entries_go(tmp_path: Path) -> None:
    adapter = cache_store(f"sqlite:///{tmp_path}/sem.db")
    assert isinstance(adapter, SqliteCache)
    for i in range(100):
        await adapter.put(entry(f"short{i}", "sem", ttl_s=10, vector=spread(i)))
    await adapter.put(entry("long", "sem", ttl_s=3600, vector=spread(1000)))
    assert await adapter.nearest("sem", spread(5), NOW + 1) is not None
    assert await adapter.indexed_rows() == 101
    found = await adapter.nearest("sem", spread(5), NOW + 20)  # the hundred short ones have expired
    assert found is not None and found[0].key == "long"
    assert await adapter.indexed_rows() == 1
    await adapter.close()


async def test_sqlite_semantic_index_lets_evicted_entries_go(tmp_path: Path) -> None:
    adapter = cache_store(f"sqlite:///{tmp_path}/sem.db", max_bytes=20_000)  # about 60 small entries
    assert isinstance(adapter, SqliteCache)
    for i in range(50):
        await adapter.put(entry(f"old{i}", "sem", ttl_s=3600, vector=spread(i)))
    assert await adapter.nearest("sem", spread(3), NOW) is not None
    for i in range(200):  # evicts the old ones, least recently used first
        await adapter.put(CacheEntry(f"new{i}", "sem", b"{}", NOW + 1 + i, NOW + 3600, vector=spread(i)))
    assert await adapter.nearest("sem", spread(3), NOW + 300) is not None
    stored = sum([await adapter.get("sem", f"new{i}", NOW + 300) is not None for i in range(200)])
    assert stored < 100 and await adapter.indexed_rows() <= stored
    await adapter.close()


async def test_sqlite_drops_puts_past_its_queue_instead_of_waiting(tmp_path: Path) -> None:
    adapter = SqliteCache(tmp_path / "q.db", max_pending=2)
    await adapter.start()
    release = threading.Event()
    blocked = asyncio.ensure_future(adapter._db.run(lambda conn: release.wait(10)))  # the store's thread is busy
    queued = [asyncio.ensure_future(adapter.put(entry(f"q{i}"))) for i in range(2)]
    await asyncio.sleep(0)
    await asyncio.wait_for(adapter.put(entry("dropped")), 1)  # returns at once: no third put waits
    assert adapter.dropped_puts == 1
    release.set()
    await asyncio.gather(blocked, *queued)
    assert await adapter.get("b1", "q0", NOW) is not None and await adapter.get("b1", "q1", NOW) is not None
    assert await adapter.get("b1", "dropped", NOW) is None
    await adapter.close()


async def test_sqlite_eviction_deletes_a_batch_per_write_not_everything_at_once(tmp_path: Path) -> None:
    path = tmp_path / "evict.db"
    big = SqliteCache(path, max_pending=2000)
    await asyncio.gather(*(big.put(CacheEntry(f"k{i}", "b", b"x" * 100, NOW + i, NOW + 3600)) for i in range(2000)))
    await big.close()
    small = SqliteCache(path, max_bytes=60_000)  # the budget lowered to a tenth of what is stored (300 B a row)

    async def rows() -> int:
        return int(await small._db.run(lambda conn: conn.execute("SELECT count(*) FROM cache").fetchone()[0]))

    await small.put(CacheEntry("new0", "b", b"x" * 100, NOW + 3000, NOW + 3600))
    assert 2000 - 256 <= await rows() < 2001  # one batch of the least recently used, not 1,800 rows in one write
    for i in range(1, 10):
        await small.put(CacheEntry(f"new{i}", "b", b"x" * 100, NOW + 3000 + i, NOW + 3600))
    assert await rows() <= 200  # under the budget after a few writes
    assert await small.get("b", "new9", NOW + 3100) is not None
    await small.close()


async def test_sqlite_caps_the_wal_it_keeps(tmp_path: Path) -> None:
    adapter = SqliteCache(tmp_path / "wal.db")
    limit = await adapter._db.run(lambda conn: conn.execute("PRAGMA journal_size_limit").fetchone()[0])
    assert 0 < limit <= 64 * 1024 * 1024  # cut back after each checkpoint, not kept at its largest
    await adapter.close()
