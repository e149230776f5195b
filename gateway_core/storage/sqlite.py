"""SQLite adapters (``sqlite:///path``): the embedded default of `aigw serve` (counters and health here; the cache
in sqlite_cache.py, usage in sqlite_usage.py, on the same thread pattern).

Every statement runs on one dedicated thread with its own connection, so the event loop never blocks on
disk. Several processes (``--workers N``) share the file: WAL mode, a busy timeout, and single-statement
atomic upserts (``ON CONFLICT ... DO UPDATE ... RETURNING``) keep concurrent adds exact.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import queue
import sqlite3
import threading
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, TypeVar

from .ports import CounterAdd, SharedHealth, StorageError

T = TypeVar("T")
log = logging.getLogger("aigw")
_PRUNE_EVERY = 1000  # adds between deletions of expired counters
# The WAL is cut back to this size after a checkpoint; without a limit it stays as large as it ever grew.
_JOURNAL_SIZE_LIMIT = 64 * 1024 * 1024


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


_CLOSE = object()  # a job that closes its database's connection (if open) instead of running a statement
_MAX_HAND_BACK = 64  # jobs run at most before their results go back to the loop
# (database, fn, loop, future); loop and future None: a job run after the results of the jobs queued with it are
# handed back, with no result of its own (see _SqliteThread.run_after)
_Job = tuple["_SqliteThread", Any, "asyncio.AbstractEventLoop | None", "asyncio.Future[Any] | None"]
_Done = tuple["asyncio.Future[Any]", bool, Any]  # the job's future, succeeded, its result or exception


class _Worker:
    """One thread running the jobs of one or more databases' connections (see ``_SqliteThread.share``), one
    after another.

    It runs every job queued meanwhile before it hands their results back, in one ``call_soon_threadsafe`` per
    event loop: each hand-back writes to the loop's wake-up pipe, so at 32 requests in flight one per job was
    a wake-up per job.
    """

    def __init__(self, name: str) -> None:
        self._name = name
        self._jobs: queue.SimpleQueue[_Job | None] = queue.SimpleQueue()
        self._thread: threading.Thread | None = None
        self.databases: list[_SqliteThread] = []

    @property
    def started(self) -> bool:
        return self._thread is not None

    def submit(self, job: _Job) -> None:
        if self._thread is None:
            self._thread = threading.Thread(target=self._serve, name=self._name, daemon=True)
            self._thread.start()
        self._jobs.put(job)

    def _serve(self) -> None:
        job = self._jobs.get()
        while job is not None:
            done: dict[asyncio.AbstractEventLoop, list[_Done]] = {}
            after: list[tuple[_SqliteThread, Any]] = []
            idle = False
            for _ in range(_MAX_HAND_BACK):  # a bound, so a steady stream of jobs still hands results back
                db, fn, loop, future = job
                if loop is None or future is None:
                    after.append((db, fn))
                else:
                    if fn is _CLOSE:
                        _run_after(after)  # the writes queued before a close are made before it
                    done.setdefault(loop, []).append(_run(db, fn, future))
                try:
                    job = self._jobs.get_nowait()
                except queue.Empty:
                    idle = True
                    break
                if job is None:
                    break
            for loop, results in done.items():
                _hand_back(loop, results)
            _run_after(after)
            if idle:
                job = self._jobs.get()
        for db in self.databases:
            db.close_connection()

    async def stop(self) -> None:
        thread = self._thread
        if thread is None:
            return
        self._jobs.put(None)  # after every job queued before: they finish first
        await asyncio.get_running_loop().run_in_executor(None, thread.join)
        self._thread = None


def _run(db: _SqliteThread, fn: Any, future: asyncio.Future[Any]) -> _Done:
    try:
        if fn is _CLOSE:
            db.close_connection()
            return future, True, None
        conn = db.connection()
        return future, True, _retry_busy(lambda: fn(conn))
    except BaseException as exc:  # noqa: BLE001 - handed to the caller, who raises it
        return future, False, exc


def _run_after(jobs: list[tuple[_SqliteThread, Any]]) -> None:
    for db, fn in jobs:
        try:
            conn = db.connection()
            _retry_busy(lambda: fn(conn))  # noqa: B023 - called at once, in this iteration
        except Exception as exc:  # noqa: BLE001 - no one waits for it: logged
            log.warning("SQLite store %s: a write made after a lookup failed: %s", db._path, exc)
    jobs.clear()


def _hand_back(loop: asyncio.AbstractEventLoop, results: list[_Done]) -> None:
    def done() -> None:
        for future, ok, value in results:
            if not future.done():  # the caller may have been cancelled meanwhile
                if ok:
                    future.set_result(value)
                else:
                    future.set_exception(value)

    with contextlib.suppress(RuntimeError):  # the loop is closed: no one waits any more
        loop.call_soon_threadsafe(done)


class _SqliteThread:
    """One connection, used only from its worker's thread (its own, or one shared with another database).

    A round trip is a queue put and a share of one ``call_soon_threadsafe`` back: lighter on the event loop
    than ``run_in_executor`` (which adds a concurrent future, its lock and the chaining of two futures), which
    was a sixth of the loop's time with every policy on.
    """

    def __init__(self, path: Path, schema: str) -> None:
        self._path = path
        self._schema = schema
        self._conn: sqlite3.Connection | None = None
        self._worker = _Worker(f"aigw-sqlite-{path.name}")
        self._worker.databases.append(self)

    def share(self, other: _SqliteThread) -> None:
        """Run this database's jobs on ``other``'s thread from now on (call before either runs a job), so that
        one job there may use both connections (see ``connection``)."""
        if self._worker.started or other._worker.started:
            raise RuntimeError("SQLite stores share a thread only before their first job")
        self._worker.databases.remove(self)
        self._worker = other._worker
        self._worker.databases.append(self)

    def shares_thread_with(self, other: _SqliteThread) -> bool:
        return self._worker is other._worker

    def connection(self) -> sqlite3.Connection:
        """The connection, opened on first use: only on the worker's thread (inside a job of this database or
        of one that shares its thread)."""
        return self._conn if self._conn is not None else self._open()

    def close_connection(self) -> None:
        if self._conn is not None:
            self._conn.close()
            self._conn = None

    def _open(self) -> sqlite3.Connection:
        self._path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
        _private_files(self._path)
        # timeout=0: SQLite's own busy handler sleeps 1, 2, 5, 10... ms while another process holds the write
        # lock, which measured as 20 ms p50 at 32 connections over 2 workers; we retry in short steps instead.
        conn = sqlite3.connect(self._path, timeout=0, isolation_level=None, check_same_thread=False)
        _retry_busy(lambda: conn.execute("PRAGMA journal_mode=WAL"))
        conn.execute("PRAGMA synchronous=NORMAL")
        conn.execute(f"PRAGMA journal_size_limit={_JOURNAL_SIZE_LIMIT}")
        _retry_busy(lambda: conn.executescript(self._schema))
        self._conn = conn
        return conn

    async def run(self, fn: Callable[[sqlite3.Connection], T]) -> T:
        return await self.result(self.submit(fn))

    def submit(self, fn: Callable[[sqlite3.Connection], T]) -> asyncio.Future[T]:
        """Queue ``fn`` now; its result (or error) comes back on the future (await it with ``result``)."""
        loop = asyncio.get_running_loop()
        future: asyncio.Future[T] = loop.create_future()
        self._worker.submit((self, fn, loop, future))
        return future

    async def result(self, future: asyncio.Future[T]) -> T:
        try:
            return await future
        except (sqlite3.Error, OSError) as exc:
            raise StorageError(f"SQLite store {self._path}: {exc}") from exc

    def run_after(self, fn: Callable[[sqlite3.Connection], object]) -> None:
        """Run ``fn`` on the thread after the jobs queued with it have handed their results back, with none
        of its own (a failure is logged): work that rides on another job's round trip, off its latency."""
        self._worker.submit((self, fn, None, None))

    async def close(self) -> None:
        """Close the connection after every job queued before; stop the thread once no database on it is open."""
        worker = self._worker
        if not worker.started:
            return
        loop = asyncio.get_running_loop()
        future: asyncio.Future[None] = loop.create_future()
        worker.submit((self, _CLOSE, loop, future))
        await future
        if all(db._conn is None for db in worker.databases):
            await worker.stop()


_COUNTERS_SCHEMA = """
CREATE TABLE IF NOT EXISTS counters (
    key TEXT NOT NULL,
    window INTEGER NOT NULL,
    value INTEGER NOT NULL,
    expires_at REAL NOT NULL,
    PRIMARY KEY (key, window)
) WITHOUT ROWID;
"""


_UPSERT = (
    "INSERT INTO counters (key, window, value, expires_at) VALUES (?, ?, ?, ?) "
    "ON CONFLICT (key, window) DO UPDATE SET value = value + excluded.value, "
    "expires_at = max(expires_at, excluded.expires_at) RETURNING value"
)


class SqliteCounters:
    def __init__(self, path: Path) -> None:
        self._db = _SqliteThread(path, _COUNTERS_SCHEMA)
        self._adds = 0

    async def start(self) -> None:
        await self._db.run(lambda conn: None)

    async def add(self, key: str, window: int, amount: int, ttl_s: int) -> int:
        return (await self.add_many([CounterAdd(key, window, amount, ttl_s)]))[0]

    async def add_many(self, adds: Sequence[CounterAdd]) -> list[int]:
        if not adds:
            return []
        return await self._db.run(self.adding(adds))

    def adding(self, adds: Sequence[CounterAdd]) -> Callable[[sqlite3.Connection], list[int]]:
        """The job that makes ``adds`` (at least one) on this store's connection and returns their totals."""
        self._adds += len(adds)
        prune = self._adds >= _PRUNE_EVERY
        if prune:
            self._adds = 0
        now = time.time()
        rows = [(add.key, add.window, add.amount, now + add.ttl_s) for add in adds]

        def add_many(conn: sqlite3.Connection) -> list[int]:
            if len(rows) == 1 and not prune:  # one statement is its own transaction
                return [int(conn.execute(_UPSERT, rows[0]).fetchone()[0])]
            conn.execute("BEGIN IMMEDIATE")  # the write lock now: no busy error halfway through
            try:
                totals = [int(conn.execute(_UPSERT, row).fetchone()[0]) for row in rows]
                if prune:
                    conn.execute("DELETE FROM counters WHERE expires_at < ?", (now,))
                conn.execute("COMMIT")
            except BaseException:
                if conn.in_transaction:
                    conn.execute("ROLLBACK")
                raise
            return totals

        return add_many

    async def get(self, key: str, window: int) -> int:
        def get(conn: sqlite3.Connection) -> int:
            row = conn.execute("SELECT value FROM counters WHERE key = ? AND window = ?", (key, window)).fetchone()
            return int(row[0]) if row else 0

        return await self._db.run(get)

    async def close(self) -> None:
        await self._db.close()


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
