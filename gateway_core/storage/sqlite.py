"""SQLite adapters (``sqlite:///path``): the embedded default of `aigw serve`.

Every statement runs on one dedicated thread with its own connection, so the event loop never blocks on
disk. Several processes (``--workers N``) share the file: WAL mode, a busy timeout, and single-statement
atomic upserts (``ON CONFLICT ... DO UPDATE ... RETURNING``) keep concurrent adds exact.
"""

from __future__ import annotations

import asyncio
import sqlite3
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import TypeVar

from .ports import StorageError

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


class _SqliteThread:
    """One connection, used only from its own thread."""

    def __init__(self, path: Path, schema: str) -> None:
        self._path = path
        self._schema = schema
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix=f"aigw-sqlite-{path.name}")
        self._conn: sqlite3.Connection | None = None

    def _open(self) -> None:
        self._path.parent.mkdir(parents=True, exist_ok=True)
        # timeout=0: SQLite's own busy handler sleeps 1, 2, 5, 10... ms while another process holds the write
        # lock, which measured as 20 ms p50 at 32 connections over 2 workers; we retry in short steps instead.
        conn = sqlite3.connect(self._path, timeout=0, isolation_level=None, check_same_thread=False)
        _retry_busy(lambda: conn.execute("PRAGMA journal_mode=WAL"))
        conn.execute("PRAGMA synchronous=NORMAL")
        _retry_busy(lambda: conn.executescript(self._schema))
        self._conn = conn

    async def run(self, fn: Callable[[sqlite3.Connection], T]) -> T:
        def call() -> T:
            if self._conn is None:
                self._open()
            conn = self._conn
            assert conn is not None
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
