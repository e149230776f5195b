"""The cache on SQLite: exact and semantic entries in one table, least recently used entries evicted past the
size budget, on the same one-thread-per-connection pattern as the other SQLite adapters."""

from __future__ import annotations

import asyncio
import functools
import logging
import sqlite3
import time
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

from ..cache.vectors import pack, unpack
from .ports import CacheEntry, CacheStore, CounterAdd, CounterStore, LookupThenAdd, StorageError
from .sqlite import SqliteCounters, _SqliteThread

if TYPE_CHECKING:
    from ..cache.vector_index import VectorIndex

log = logging.getLogger("aigw")
T = TypeVar("T")

_CACHE_SCHEMA = """
CREATE TABLE IF NOT EXISTS cache (
    id INTEGER PRIMARY KEY,
    bucket TEXT NOT NULL,
    key TEXT NOT NULL,
    body BLOB NOT NULL,
    vector BLOB,
    created_s REAL NOT NULL,
    expires_s REAL NOT NULL,
    last_used_s REAL NOT NULL,
    prompt_tokens INTEGER NOT NULL,
    completion_tokens INTEGER NOT NULL,
    size INTEGER NOT NULL
);
CREATE UNIQUE INDEX IF NOT EXISTS cache_key ON cache (bucket, key);
CREATE INDEX IF NOT EXISTS cache_lru ON cache (last_used_s);
-- Dropping expired rows reads only those rows, not the whole table.
CREATE INDEX IF NOT EXISTS cache_expiry ON cache (expires_s);
-- (bucket, rowid): a semantic lookup reads only the rows added since it last looked, not the whole bucket.
CREATE INDEX IF NOT EXISTS cache_bucket ON cache (bucket);
-- The running total of entry sizes, kept by triggers, so every put can check the budget in O(1).
CREATE TABLE IF NOT EXISTS cache_size (id INTEGER PRIMARY KEY CHECK (id = 1), total INTEGER NOT NULL);
INSERT OR IGNORE INTO cache_size (id, total) VALUES (1, 0);
CREATE TRIGGER IF NOT EXISTS cache_size_insert AFTER INSERT ON cache
  BEGIN UPDATE cache_size SET total = total + new.size WHERE id = 1; END;
CREATE TRIGGER IF NOT EXISTS cache_size_delete AFTER DELETE ON cache
  BEGIN UPDATE cache_size SET total = total - old.size WHERE id = 1; END;
CREATE TRIGGER IF NOT EXISTS cache_size_update AFTER UPDATE OF size ON cache
  BEGIN UPDATE cache_size SET total = total - old.size + new.size WHERE id = 1; END;
"""
_TOUCH_EVERY_S = 60.0
_RESYNC_S = 60.0  # how often a bucket's index drops the rows other processes deleted
_LOAD_BATCH = 1024  # rows read into the index at a time
_IDLE_S = 600.0  # a bucket's index not searched this long is dropped (rebuilt from the file when needed)
_MAX_PENDING_PUTS = 1024  # puts waiting for the store's thread; past this a put is dropped, never waited for
_PUT_BATCH = 256  # puts written per transaction
# A put waits this long for a lookup to carry it to the store's thread (written first, in the lookup's job),
# before it makes a round trip of its own: one request at a time, a miss's put then rides on the next lookup.
_PUT_DEFER_S = 0.01
# A lookup carries the queued puts only once the oldest has waited this long (or a batch is full): one request
# at a time, each lookup carrying the one put before it was a write transaction (and its commit) per request,
# three quarters of the store thread's work; now a few requests' puts share one.
_PUT_RIDE_AFTER_S = 0.005
_DELETE_BATCH = 256  # expired or evicted rows deleted per transaction at most: no long write lock
_EXPIRE_EVERY = 100  # puts between deletions of expired rows
_ENTRY_COLUMNS = "id, bucket, key, body, vector, created_s, expires_s, prompt_tokens, completion_tokens"


class SqliteCache:
    """Exact and semantic cache in one table; evicts least recently used entries past ``max_bytes``.

    Semantic lookups keep, per bucket, an in-memory matrix of the bucket's vectors (``VectorIndex``), topped up
    with the rows other processes added since (``id > last seen``), so a lookup is one small query plus one
    matrix product, all on the store's thread, never the event loop's. Rows this process deletes (expiry,
    eviction) leave the index at once; rows other processes deleted leave it at the next resync (every
    ``_RESYNC_S``) or when a lookup finds them gone. A bucket not searched for ``_IDLE_S`` is dropped, so the
    index holds at most the vectors of the store (itself bounded by ``max_bytes``).
    """

    def __init__(self, path: Path, max_bytes: int = 256 * 1024 * 1024, max_pending: int = _MAX_PENDING_PUTS) -> None:
        self._db = _SqliteThread(path, _CACHE_SCHEMA)
        self._path = path
        self._max_bytes = max_bytes
        self._index: dict[str, VectorIndex] = {}  # touched only on the store's thread
        self._swept_s = 0.0
        self._max_pending = max_pending
        self._queue: list[tuple[CacheEntry, asyncio.Future[None]]] = []
        self._waiting = 0  # puts queued or being written
        self._writer: asyncio.Task[None] | None = None
        self._wake: asyncio.Future[None] | None = None  # the writer's wait for a lookup to carry the puts
        self._queued: dict[tuple[str, str], CacheEntry] = {}  # the entries of self._queue, for lookups
        self._queued_s = 0.0  # when the oldest put of self._queue was queued (the loop's clock)
        self._since_expiry = _EXPIRE_EVERY  # the first write drops what expired while no one wrote
        self.dropped_puts = 0
        self._closing = False

    async def start(self) -> None:
        await self._db.run(lambda conn: None)

    async def get(self, bucket: str, key: str, now_s: float) -> CacheEntry | None:
        queued = self._queued_entry(bucket, key, now_s)
        if queued is not None:
            return queued
        return await self._carrying_puts(lambda conn: _get(conn, bucket, key, now_s))

    async def get_then_add(
        self, counters: SqliteCounters, bucket: str, key: str, now_s: float, adds: Sequence[CounterAdd]
    ) -> tuple[CacheEntry | None, list[int] | None]:
        """``get``; on a miss, ``counters.add_many(adds)`` in the same job (see ``lookup_then_add``)."""
        queued = self._queued_entry(bucket, key, now_s)
        if queued is not None:
            return queued, None
        add = counters.adding(adds)
        counters_db = counters._db

        def get_then_add(conn: sqlite3.Connection) -> tuple[CacheEntry | None, list[int] | None]:
            entry = _get(conn, bucket, key, now_s)
            if entry is not None:
                return entry, None  # a hit admits nothing
            return None, add(counters_db.connection())

        return await self._carrying_puts(get_then_add)

    def _queued_entry(self, bucket: str, key: str, now_s: float) -> CacheEntry | None:
        """A put still waiting for a trip answers a lookup of its key: a client's next identical request hits."""
        if not self._queued:
            return None
        entry = self._queued.get((bucket, key))
        return entry if entry is not None and entry.expires_s > now_s else None

    def _take(self) -> list[tuple[CacheEntry, asyncio.Future[None]]]:
        """The next batch of queued puts, for a write."""
        batch, self._queue = self._queue[:_PUT_BATCH], self._queue[_PUT_BATCH:]
        for entry, _ in batch:
            if self._queued.get((entry.bucket, entry.key)) is entry:
                del self._queued[(entry.bucket, entry.key)]
        return batch

    async def _carrying_puts(self, fn: Callable[[sqlite3.Connection], T]) -> T:
        """Run ``fn`` on the store's thread; the puts queued meanwhile ride on its round trip, written right
        after its result is handed back (one transaction, as the writer would), so they make no trip of their
        own and add nothing to the lookup's latency. A lookup queued with them may not see them yet."""
        if not self._queue or not self._puts_due():
            return await self._db.run(fn)
        batch = self._take()
        lookup = self._db.submit(fn)  # queued first: it runs, and answers, before the write
        entries = [entry for entry, _ in batch]
        self._db.run_after(functools.partial(self._write, entries=entries))
        for _, future in batch:
            if not future.done():
                future.set_result(None)  # handed to the thread, which writes it before any later job, or logs
        return await self._db.result(lookup)

    def _puts_due(self) -> bool:
        """Whether the queued puts go with the next trip: a full batch, a close, or the oldest waited enough."""
        if len(self._queue) >= _PUT_BATCH or self._closing:
            return True
        return asyncio.get_running_loop().time() - self._queued_s >= _PUT_RIDE_AFTER_S

    async def put(self, entry: CacheEntry) -> None:
        """Queue ``entry`` for the next write (one transaction for every put queued meanwhile) and wait for it.

        When ``max_pending`` puts are already waiting, the entry is dropped (it is a cache) and counted in
        ``dropped_puts``: a store that cannot keep up never holds responses or memory.
        """
        if self._waiting >= self._max_pending:
            self.dropped_puts += 1
            if self.dropped_puts & (self.dropped_puts - 1) == 0:  # 1, 2, 4, 8...: seen, without a flood
                log.warning("cache store behind: %d puts dropped so far (%d waiting)", self.dropped_puts, self._waiting)
            return
        future: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        if not self._queue:
            self._queued_s = asyncio.get_running_loop().time()
        self._queue.append((entry, future))
        self._queued[(entry.bucket, entry.key)] = entry
        self._waiting += 1
        if self._writer is None:
            self._writer = asyncio.get_running_loop().create_task(self._write_queued())
        elif len(self._queue) >= _PUT_BATCH and self._wake is not None:
            _wake_up(self._wake)  # a full batch goes now
        try:
            await future
        finally:
            self._waiting -= 1

    async def _write_queued(self) -> None:
        loop = asyncio.get_running_loop()
        try:
            while self._queue:
                wait_s = self._queued_s + _PUT_DEFER_S - loop.time()
                if wait_s > 0 and len(self._queue) < _PUT_BATCH and not self._closing:
                    self._wake = loop.create_future()
                    timer = loop.call_later(wait_s, _wake_up, self._wake)
                    try:
                        await self._wake  # a lookup may carry the queued puts meanwhile (see _carrying_puts)
                    finally:
                        timer.cancel()
                        self._wake = None
                    continue  # carried, or more queued since (then the oldest of those sets the wait)
                batch = self._take()
                entries = [entry for entry, _ in batch]
                try:
                    await self._db.run(functools.partial(self._write, entries=entries))
                except StorageError as exc:
                    for _, future in batch:
                        if not future.done():
                            future.set_exception(exc)
                    continue
                for _, future in batch:
                    if not future.done():
                        future.set_result(None)
        finally:
            self._writer = None

    def _write(self, conn: sqlite3.Connection, *, entries: list[CacheEntry]) -> None:
        """Store ``entries``, drop a batch of expired rows now and then, evict a batch if over budget; one
        transaction (on the store's thread)."""
        rows = []
        for entry in entries:
            vector = pack(entry.vector) if entry.vector is not None else None
            size = len(entry.body) + (len(vector) if vector else 0) + 200
            rows.append(
                (
                    entry.bucket,
                    entry.key,
                    entry.body,
                    vector,
                    entry.created_s,
                    entry.expires_s,
                    entry.created_s,
                    entry.prompt_tokens,
                    entry.completion_tokens,
                    size,
                )
            )
        self._since_expiry += len(entries)
        deleted: list[tuple[int, str]] = []
        conn.execute("BEGIN IMMEDIATE")
        try:
            conn.executemany(
                "INSERT INTO cache (bucket, key, body, vector, created_s, expires_s, last_used_s, prompt_tokens, "
                "completion_tokens, size) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?) "
                "ON CONFLICT (bucket, key) DO UPDATE SET body = excluded.body, vector = excluded.vector, "
                "created_s = excluded.created_s, "
                "expires_s = excluded.expires_s, last_used_s = excluded.last_used_s, "
                "prompt_tokens = excluded.prompt_tokens, completion_tokens = excluded.completion_tokens, "
                "size = excluded.size",
                rows,
            )
            if self._since_expiry >= _EXPIRE_EVERY:
                deleted += conn.execute(
                    "DELETE FROM cache WHERE id IN (SELECT id FROM cache WHERE expires_s <= ? LIMIT ?) "
                    "RETURNING id, bucket",
                    (max(e.created_s for e in entries), _DELETE_BATCH),
                ).fetchall()
            total = conn.execute("SELECT total FROM cache_size WHERE id = 1").fetchone()[0]
            if total > self._max_bytes:
                deleted += self._evict(conn, total, max(_DELETE_BATCH, 2 * len(entries)))
            conn.execute("COMMIT")
        except BaseException:
            if conn.in_transaction:
                conn.execute("ROLLBACK")
            raise
        if self._since_expiry >= _EXPIRE_EVERY:
            self._since_expiry = 0
        self._forget(deleted)  # committed: the rows are gone for good

    def _evict(self, conn: sqlite3.Connection, total: int, max_rows: int) -> list[tuple[int, str]]:
        # Least recently used first, towards 90% of the budget, but at most ``max_rows`` rows per transaction:
        # a cache far over budget (a lowered budget) gets back under it over a few puts, not in one long write
        # (deleting a tenth of a 256 MiB cache at once held the write lock for 300-400 ms).
        excess = total - int(self._max_bytes * 0.9)
        victims: list[tuple[int, str]] = []
        rows = conn.execute("SELECT id, bucket, size FROM cache ORDER BY last_used_s, id LIMIT ?", (max_rows,))
        for row_id, bucket, size in rows:
            if excess <= 0:
                break
            victims.append((row_id, bucket))
            excess -= size
        conn.executemany("DELETE FROM cache WHERE id = ?", [(row_id,) for row_id, _ in victims])
        return victims

    def _forget(self, rows: Iterable[tuple[int, str]]) -> None:
        """Drop deleted rows from the semantic index (on the store's thread)."""
        by_bucket: dict[str, list[int]] = {}
        for row_id, bucket in rows:
            if bucket in self._index:
                by_bucket.setdefault(bucket, []).append(row_id)
        for bucket, row_ids in by_bucket.items():
            self._index[bucket].remove(row_ids)

    async def nearest(self, bucket: str, vector: tuple[float, ...], now_s: float) -> tuple[CacheEntry, float] | None:
        return await self._carrying_puts(lambda conn: self._nearest(conn, bucket, vector, now_s))

    def _nearest(
        self, conn: sqlite3.Connection, bucket: str, vector: tuple[float, ...], now_s: float
    ) -> tuple[CacheEntry, float] | None:
        mono_s = time.monotonic()
        self._sweep(mono_s)
        index = self._index.get(bucket)
        if index is None or index.dims != len(vector):
            from ..cache.vector_index import VectorIndex  # numpy, only once the semantic cache is used

            index = self._index[bucket] = VectorIndex(len(vector))
            index.synced_s = mono_s
        index.used_s = mono_s
        if index.last_id == 0:  # a cold load: size the matrix once instead of growing it step by step
            index.reserve(conn.execute("SELECT count(*) FROM cache WHERE bucket = ?", (bucket,)).fetchone()[0])
        rows = conn.execute(
            "SELECT id, vector, expires_s FROM cache WHERE bucket = ? AND id > ? AND vector IS NOT NULL",
            (bucket, index.last_id),
        )
        while batch := rows.fetchmany(_LOAD_BATCH):  # a batch at a time: no second copy of a whole bucket
            index.add(batch)
        if mono_s - index.synced_s > _RESYNC_S:  # rows other processes evicted or replaced
            index.retain(
                r[0] for r in conn.execute("SELECT id FROM cache WHERE bucket = ? AND vector IS NOT NULL", (bucket,))
            )
            index.synced_s = mono_s
        best = index.best(vector, now_s)
        if best is None:
            return None
        row_id, score = best
        row = conn.execute(f"SELECT {_ENTRY_COLUMNS} FROM cache WHERE id = ?", (row_id,)).fetchone()
        if row is None or row[6] <= now_s:
            index.remove([row_id])  # evicted or replaced meanwhile
            return None
        return _entry(row), score

    async def indexed_rows(self) -> int:
        """How many vectors the semantic index holds in memory, over all buckets (live and not yet compacted)."""
        return await self._db.run(lambda conn: sum(index.held for index in self._index.values()))

    def _sweep(self, mono_s: float) -> None:
        """Drop the indexes of buckets nobody searched lately, and of buckets left empty."""
        if mono_s - self._swept_s < _RESYNC_S:
            return
        self._swept_s = mono_s
        for bucket in [b for b, i in self._index.items() if mono_s - i.used_s > _IDLE_S or not len(i)]:
            del self._index[bucket]

    async def close(self) -> None:
        self._closing = True
        if self._wake is not None:
            _wake_up(self._wake)
        if self._writer is not None:
            await asyncio.shield(self._writer)  # the puts already queued are written, not lost
        await self._db.close()


def _wake_up(future: asyncio.Future[None]) -> None:
    if not future.done():
        future.set_result(None)


def lookup_then_add(cache: CacheStore, counters: CounterStore | None) -> LookupThenAdd | None:
    """A cache lookup and, on a miss, the limits' counter adds in one round trip, where both stores are SQLite
    in this process: the cache's connection then runs on the counters' thread, one job after another, so one
    job may use both. None otherwise: the stores keep a round trip each. Call before either store starts."""
    if not isinstance(cache, SqliteCache) or not isinstance(counters, SqliteCounters):
        return None
    cache._db.share(counters._db)
    return functools.partial(cache.get_then_add, counters)


def _get(conn: sqlite3.Connection, bucket: str, key: str, now_s: float) -> CacheEntry | None:
    row = conn.execute(
        f"SELECT {_ENTRY_COLUMNS}, last_used_s FROM cache WHERE bucket = ? AND key = ? AND expires_s > ?",
        (bucket, key, now_s),
    ).fetchone()
    if row is None:
        return None
    # Recency to the minute is enough for LRU; a write on every hit would contend for the write lock across
    # workers (measured: c32 hits fell from ~7,000 to 3,551 req/s with it).
    if now_s - row[-1] > _TOUCH_EVERY_S:
        conn.execute("UPDATE cache SET last_used_s = ? WHERE id = ?", (now_s, row[0]))
    return _entry(row)


def _entry(row: tuple[Any, ...]) -> CacheEntry:
    return CacheEntry(
        key=row[2],
        bucket=row[1],
        body=bytes(row[3]),
        vector=unpack(row[4]) if row[4] is not None else None,
        created_s=row[5],
        expires_s=row[6],
        prompt_tokens=row[7],
        completion_tokens=row[8],
    )
