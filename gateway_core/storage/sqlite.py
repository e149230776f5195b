"""SQLite adapters (``sqlite:///path``): the embedded default of `aigw serve`.

Every statement runs on one dedicated thread with its own connection, so the event loop never blocks on
disk. Several processes (``--workers N``) share the file: WAL mode, a busy timeout, and single-statement
atomic upserts (``ON CONFLICT ... DO UPDATE ... RETURNING``) keep concurrent adds exact.
"""

from __future__ import annotations

import asyncio
import os
import sqlite3
import time
from collections.abc import Callable, Iterable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

import orjson

from ..cache.vectors import pack, unpack
from ..usage.record import (
    RecordQuery,
    SummaryKey,
    SummaryQuery,
    SummaryTotals,
    UsageBatch,
    UsageRecord,
    record_from_dict,
    record_to_dict,
)
from .ports import CacheEntry, SharedHealth, StorageError

if TYPE_CHECKING:
    from ..cache.vector_index import VectorIndex

T = TypeVar("T")
_PRUNE_EVERY = 1000  # adds between deletions of expired counters


def _retry_busy(fn: Callable[[], T], budget_s: float = 10.0) -> T:
    """Run ``fn``, retrying while another process holds the database lock, for at most ``budget_s``."""
    deadline = time.monotonic() + budget_s
    pause_s = 0.00005
    while True:
        try:
            return fn()
        except sqlite3.OperationalError as exc:
            if "locked" not in str(exc) and "busy" not in str(exc):
                raise
            if time.monotonic() > deadline:
                raise
            time.sleep(pause_s)  # on the store's own thread, never the event loop's
            pause_s = min(pause_s * 2, 0.002)


def _private_files(path: Path) -> None:
    """Create the database file 0600 (SQLite gives its -wal and -shm files the same mode) and tighten any of
    the three that an earlier version left readable by others: keys, cached answers and usage live there."""
    os.close(os.open(path, os.O_RDWR | os.O_CREAT, 0o600))
    for name in (path, Path(f"{path}-wal"), Path(f"{path}-shm")):
        try:
            if name.stat().st_mode & 0o077:
                name.chmod(0o600)
        except FileNotFoundError:
            pass


class _SqliteThread:
    """One connection, used only from its own thread."""

    def __init__(self, path: Path, schema: str) -> None:
        self._path = path
        self._schema = schema
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix=f"aigw-sqlite-{path.name}")
        self._conn: sqlite3.Connection | None = None

    def _open(self) -> sqlite3.Connection:
        self._path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
        _private_files(self._path)
        # timeout=0: SQLite's own busy handler sleeps 1, 2, 5, 10... ms while another process holds the write
        # lock, which measured as 20 ms p50 at 32 connections over 2 workers; we retry in short steps instead.
        conn = sqlite3.connect(self._path, timeout=0, isolation_level=None, check_same_thread=False)
        _retry_busy(lambda: conn.execute("PRAGMA journal_mode=WAL"))
        conn.execute("PRAGMA synchronous=NORMAL")
        _retry_busy(lambda: conn.executescript(self._schema))
        self._conn = conn
        return conn

    async def run(self, fn: Callable[[sqlite3.Connection], T]) -> T:
        def call() -> T:
            conn = self._conn if self._conn is not None else self._open()
            return _retry_busy(lambda: fn(conn))

        try:
            return await asyncio.get_running_loop().run_in_executor(self._executor, call)
        except (sqlite3.Error, OSError) as exc:
            raise StorageError(f"SQLite store {self._path}: {exc}") from exc

    async def close(self) -> None:
        def close() -> None:
            if self._conn is not None:
                self._conn.close()
                self._conn = None

        await asyncio.get_running_loop().run_in_executor(self._executor, close)
        self._executor.shutdown(wait=True)


_COUNTERS_SCHEMA = """
CREATE TABLE IF NOT EXISTS counters (
    key TEXT NOT NULL,
    window INTEGER NOT NULL,
    value INTEGER NOT NULL,
    expires_at REAL NOT NULL,
    PRIMARY KEY (key, window)
) WITHOUT ROWID;
"""


class SqliteCounters:
    def __init__(self, path: Path) -> None:
        self._db = _SqliteThread(path, _COUNTERS_SCHEMA)
        self._adds = 0

    async def start(self) -> None:
        await self._db.run(lambda conn: None)

    async def add(self, key: str, window: int, amount: int, ttl_s: int) -> int:
        self._adds += 1
        prune = self._adds % _PRUNE_EVERY == 0
        expires_at = time.time() + ttl_s

        def add(conn: sqlite3.Connection) -> int:
            row = conn.execute(
                "INSERT INTO counters (key, window, value, expires_at) VALUES (?, ?, ?, ?) "
                "ON CONFLICT (key, window) DO UPDATE SET value = value + excluded.value, "
                "expires_at = max(expires_at, excluded.expires_at) RETURNING value",
                (key, window, amount, expires_at),
            ).fetchone()
            if prune:
                conn.execute("DELETE FROM counters WHERE expires_at < ?", (time.time(),))
            return int(row[0])

        return await self._db.run(add)

    async def get(self, key: str, window: int) -> int:
        def get(conn: sqlite3.Connection) -> int:
            row = conn.execute("SELECT value FROM counters WHERE key = ? AND window = ?", (key, window)).fetchone()
            return int(row[0]) if row else 0

        return await self._db.run(get)

    async def close(self) -> None:
        await self._db.close()


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

    def __init__(self, path: Path, max_bytes: int = 256 * 1024 * 1024) -> None:
        self._db = _SqliteThread(path, _CACHE_SCHEMA)
        self._max_bytes = max_bytes
        self._index: dict[str, VectorIndex] = {}  # touched only on the store's thread
        self._puts = 0
        self._swept_s = 0.0

    async def start(self) -> None:
        await self._db.run(lambda conn: None)

    async def get(self, bucket: str, key: str, now_s: float) -> CacheEntry | None:
        def get(conn: sqlite3.Connection) -> CacheEntry | None:
            row = conn.execute(
                f"SELECT {_ENTRY_COLUMNS}, last_used_s FROM cache WHERE bucket = ? AND key = ? AND expires_s > ?",
                (bucket, key, now_s),
            ).fetchone()
            if row is None:
                return None
            # Recency to the minute is enough for LRU; a write on every hit would contend for the write lock
            # across workers (measured: c32 hits fell from ~7,000 to 3,551 req/s with it).
            if now_s - row[-1] > _TOUCH_EVERY_S:
                conn.execute("UPDATE cache SET last_used_s = ? WHERE id = ?", (now_s, row[0]))
            return _entry(row)

        return await self._db.run(get)

    async def put(self, entry: CacheEntry) -> None:
        self._puts += 1
        drop_expired = self._puts % 100 == 1
        vector = pack(entry.vector) if entry.vector is not None else None
        size = len(entry.body) + (len(vector) if vector else 0) + 200

        def put(conn: sqlite3.Connection) -> None:
            conn.execute(
                "INSERT INTO cache (bucket, key, body, vector, created_s, expires_s, last_used_s, prompt_tokens, "
                "completion_tokens, size) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?) "
                "ON CONFLICT (bucket, key) DO UPDATE SET body = excluded.body, vector = excluded.vector, "
                "created_s = excluded.created_s, "
                "expires_s = excluded.expires_s, last_used_s = excluded.last_used_s, "
                "prompt_tokens = excluded.prompt_tokens, completion_tokens = excluded.completion_tokens, "
                "size = excluded.size",
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
                ),
            )
            if drop_expired:
                self._forget(
                    conn.execute("DELETE FROM cache WHERE expires_s <= ? RETURNING id, bucket", (entry.created_s,))
                )
            total = conn.execute("SELECT total FROM cache_size WHERE id = 1").fetchone()[0]
            if total > self._max_bytes:
                self._evict(conn, total)

        await self._db.run(put)

    def _evict(self, conn: sqlite3.Connection, total: int) -> None:
        # Least recently used first, down to 90% of the budget so eviction does not run on every put.
        excess = total - int(self._max_bytes * 0.9)
        victims: list[tuple[int, str]] = []
        for row_id, bucket, size in conn.execute("SELECT id, bucket, size FROM cache ORDER BY last_used_s, id"):
            if excess <= 0:
                break
            victims.append((row_id, bucket))
            excess -= size
        conn.executemany("DELETE FROM cache WHERE id = ?", [(row_id,) for row_id, _ in victims])
        self._forget(victims)

    def _forget(self, rows: Iterable[tuple[int, str]]) -> None:
        """Drop deleted rows from the semantic index (on the store's thread)."""
        by_bucket: dict[str, list[int]] = {}
        for row_id, bucket in rows:
            if bucket in self._index:
                by_bucket.setdefault(bucket, []).append(row_id)
        for bucket, row_ids in by_bucket.items():
            self._index[bucket].remove(row_ids)

    async def nearest(self, bucket: str, vector: tuple[float, ...], now_s: float) -> tuple[CacheEntry, float] | None:
        return await self._db.run(lambda conn: self._nearest(conn, bucket, vector, now_s))

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
        await self._db.close()


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


# Tables named apart from the old per-backend ``health`` table, which files made by earlier versions still hold.
_HEALTH_SCHEMA = """
CREATE TABLE IF NOT EXISTS breakers (
    backend TEXT PRIMARY KEY,
    open_until_s REAL NOT NULL,
    event_s REAL NOT NULL
);
CREATE TABLE IF NOT EXISTS throttles (
    backend TEXT NOT NULL,
    deployment TEXT NOT NULL,
    until_s REAL NOT NULL,
    PRIMARY KEY (backend, deployment)
);
"""


class SqliteHealth:
    def __init__(self, path: Path) -> None:
        self._db = _SqliteThread(path, _HEALTH_SCHEMA)

    async def start(self) -> None:
        await self._db.run(lambda conn: None)

    async def publish_breaker(self, backend: str, open_until_s: float, event_s: float) -> None:
        # One statement: the later event wins even when processes publish at once.
        await self._db.run(
            lambda conn: conn.execute(
                "INSERT INTO breakers (backend, open_until_s, event_s) VALUES (?, ?, ?) "
                "ON CONFLICT (backend) DO UPDATE SET open_until_s = excluded.open_until_s, event_s = excluded.event_s "
                "WHERE excluded.event_s > breakers.event_s",
                (backend, open_until_s, event_s),
            )
        )

    async def publish_throttle(self, backend: str, deployment: str, until_s: float) -> None:
        await self._db.run(
            lambda conn: conn.execute(
                "INSERT INTO throttles (backend, deployment, until_s) VALUES (?, ?, ?) "
                "ON CONFLICT (backend, deployment) DO UPDATE SET until_s = max(until_s, excluded.until_s)",
                (backend, deployment, until_s),
            )
        )

    async def read_all(self) -> SharedHealth:
        def read(conn: sqlite3.Connection) -> SharedHealth:
            breakers = conn.execute("SELECT backend, open_until_s, event_s FROM breakers").fetchall()
            throttles = conn.execute("SELECT backend, deployment, until_s FROM throttles").fetchall()
            return SharedHealth({r[0]: (r[1], r[2]) for r in breakers}, {(r[0], r[1]): r[2] for r in throttles})

        return await self._db.run(read)

    async def close(self) -> None:
        await self._db.close()


# The Table Storage layout, mirrored: records keyed by (day, tenant, record_id); a marker row per written batch
# (pending until finished); one row per summary key; and a marker per (batch, day) absorbed.
_TOTALS = SummaryTotals.__slots__
_USAGE_SCHEMA = f"""
CREATE TABLE IF NOT EXISTS usage_records (
    day TEXT NOT NULL,
    tenant TEXT NOT NULL,
    record_id TEXT NOT NULL,
    time_s REAL NOT NULL,
    request_id TEXT NOT NULL,
    user TEXT NOT NULL,
    batch_id TEXT NOT NULL,
    data BLOB NOT NULL,
    PRIMARY KEY (day, tenant, record_id)
) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS usage_records_time ON usage_records (time_s);
CREATE INDEX IF NOT EXISTS usage_records_request ON usage_records (request_id);
CREATE INDEX IF NOT EXISTS usage_records_batch ON usage_records (batch_id);
CREATE TABLE IF NOT EXISTS usage_batches (
    batch_id TEXT PRIMARY KEY,
    written_s REAL NOT NULL,
    finished INTEGER NOT NULL DEFAULT 0
);
CREATE INDEX IF NOT EXISTS usage_batches_pending ON usage_batches (finished, written_s);
CREATE TABLE IF NOT EXISTS usage_summaries (
    day TEXT NOT NULL,
    tenant TEXT NOT NULL,
    user TEXT NOT NULL,
    deployment TEXT NOT NULL,
    model TEXT NOT NULL,
    {", ".join(f"{name} INTEGER NOT NULL" for name in _TOTALS)},
    PRIMARY KEY (day, tenant, user, deployment, model)
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS usage_absorbed (
    batch_id TEXT NOT NULL,
    day TEXT NOT NULL,
    PRIMARY KEY (batch_id, day)
) WITHOUT ROWID;
"""
_UPSERT_SUMMARY = (
    f"INSERT INTO usage_summaries (day, tenant, user, deployment, model, {', '.join(_TOTALS)}) "
    f"VALUES (?, ?, ?, ?, ?, {', '.join('?' for _ in _TOTALS)}) "
    "ON CONFLICT (day, tenant, user, deployment, model) DO UPDATE SET "
    + ", ".join(f"{name} = {name} + excluded.{name}" for name in _TOTALS)
)


def _transaction(conn: sqlite3.Connection, fn: Callable[[], T]) -> T:
    """``fn`` in one write transaction, taken at once (IMMEDIATE) so it never fails half-way on a lock."""
    conn.execute("BEGIN IMMEDIATE")
    try:
        result = fn()
    except BaseException:
        conn.execute("ROLLBACK")
        raise
    conn.execute("COMMIT")
    return result


class SqliteUsage:
    """Usage records and summaries in one SQLite file (``sqlite:///.aigw/usage.db``), shared by the workers."""

    def __init__(self, path: Path) -> None:
        self._db = _SqliteThread(path, _USAGE_SCHEMA)

    async def start(self) -> None:
        await self._db.run(lambda conn: None)

    async def write_batch(self, batch: UsageBatch) -> None:
        rows = [
            (
                r.day,
                r.tenant,
                r.record_id,
                r.time_s,
                r.request_id,
                r.user,
                batch.batch_id,
                orjson.dumps(record_to_dict(r)),
            )
            for r in batch.records
        ]
        written_s = time.time()

        def write(conn: sqlite3.Connection) -> None:
            def body() -> None:
                conn.executemany(
                    "INSERT OR IGNORE INTO usage_records (day, tenant, record_id, time_s, request_id, user, batch_id, "
                    "data) VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                    rows,
                )
                conn.execute(
                    "INSERT OR IGNORE INTO usage_batches (batch_id, written_s) VALUES (?, ?)",
                    (batch.batch_id, written_s),
                )

            _transaction(conn, body)

        await self._db.run(write)

    async def batch_records(self, batch_id: str) -> tuple[UsageRecord, ...] | None:
        def read(conn: sqlite3.Connection) -> tuple[UsageRecord, ...] | None:
            if conn.execute("SELECT 1 FROM usage_batches WHERE batch_id = ?", (batch_id,)).fetchone() is None:
                return None
            rows = conn.execute("SELECT data FROM usage_records WHERE batch_id = ?", (batch_id,)).fetchall()
            return tuple(record_from_dict(orjson.loads(row[0])) for row in rows)

        return await self._db.run(read)

    async def absorb(self, batch_id: str, day: str, rows: dict[SummaryKey, SummaryTotals]) -> bool:
        values = [
            (k.day, k.tenant, k.user, k.deployment, k.model, *(getattr(t, name) for name in _TOTALS))
            for k, t in rows.items()
        ]

        def absorb(conn: sqlite3.Connection) -> bool:
            def body() -> bool:
                marked = conn.execute(
                    "INSERT OR IGNORE INTO usage_absorbed (batch_id, day) VALUES (?, ?)", (batch_id, day)
                ).rowcount
                if not marked:
                    return False  # absorbed before: the marker and the rows were committed together
                conn.executemany(_UPSERT_SUMMARY, values)
                return True

            return _transaction(conn, body)

        return await self._db.run(absorb)

    async def finish_batch(self, batch_id: str) -> None:
        await self._db.run(
            lambda conn: conn.execute("UPDATE usage_batches SET finished = 1 WHERE batch_id = ?", (batch_id,))
        )

    async def pending_batches(self, written_before_s: float) -> list[str]:
        def read(conn: sqlite3.Connection) -> list[str]:
            rows = conn.execute(
                "SELECT batch_id FROM usage_batches WHERE finished = 0 AND written_s < ? ORDER BY written_s",
                (written_before_s,),
            )
            return [row[0] for row in rows]

        return await self._db.run(read)

    async def records(self, query: RecordQuery) -> list[UsageRecord]:
        where, args = _usage_filters(query.from_day, query.to_day, query.tenant, query.user)
        if query.request_id is not None:
            where += " AND request_id = ?"
            args.append(query.request_id)

        def read(conn: sqlite3.Connection) -> list[UsageRecord]:
            rows = conn.execute(
                f"SELECT data FROM usage_records WHERE {where} ORDER BY time_s DESC, record_id DESC LIMIT ?",
                (*args, query.limit),
            )
            return [record_from_dict(orjson.loads(row[0])) for row in rows]

        return await self._db.run(read)

    async def summaries(self, query: SummaryQuery) -> dict[SummaryKey, SummaryTotals]:
        where, args = _usage_filters(query.from_day, query.to_day, query.tenant, query.user)

        def read(conn: sqlite3.Connection) -> dict[SummaryKey, SummaryTotals]:
            rows = conn.execute(
                f"SELECT day, tenant, user, deployment, model, {', '.join(_TOTALS)} FROM usage_summaries WHERE {where}",
                args,
            )
            return {SummaryKey(*row[:5]): SummaryTotals(*row[5:]) for row in rows}

        return await self._db.run(read)

    async def close(self) -> None:
        await self._db.close()


def _usage_filters(from_day: str, to_day: str, tenant: str | None, user: str | None) -> tuple[str, list[object]]:
    where = "day >= ? AND day <= ?"
    args: list[object] = [from_day, to_day]
    if tenant is not None:
        where += " AND tenant = ?"
        args.append(tenant)
    if user is not None:
        where += " AND user = ?"
        args.append(user)
    return where, args
