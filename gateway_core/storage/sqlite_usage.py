"""The usage store on SQLite (``sqlite:///.aigw/usage.db``, the embedded default): records, batch markers and
summaries in one file, on the same one-thread-per-connection pattern as the other SQLite adapters."""

from __future__ import annotations

import sqlite3
import time
from collections.abc import Callable
from pathlib import Path
from typing import TypeVar

import orjson

from ..usage.record import (
    RecordQuery,
    SummaryKey,
    SummaryQuery,
    SummaryTotals,
    UsageBatch,
    UsageRecord,
    record_from_dict,
    summarise_by_day,
)
from .sqlite import _SqliteThread

T = TypeVar("T")

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
-- A key's own records (tenant and user given): a seek, newest first, not a scan of everyone's days.
CREATE INDEX IF NOT EXISTS usage_records_user ON usage_records (tenant, user, time_s, record_id);
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
        rows, written_s = _record_rows(batch), time.time()

        def write(conn: sqlite3.Connection) -> None:
            _transaction(conn, lambda: _insert_batch(conn, batch.batch_id, rows, written_s, finished=False))

        await self._db.run(write)

    async def write_summarised(self, batch: UsageBatch) -> None:
        """The records, the summary rows of each of their days and the finished batch in one transaction: the
        queue path's five trips (write, receive, read back, absorb, finish) in one, exactly once all the same
        (the absorbed markers are written with the rows, as ``absorb`` writes them)."""
        rows, written_s = _record_rows(batch), time.time()
        by_day = {
            day: [_summary_row(k, t) for k, t in rows.items()] for day, rows in summarise_by_day(batch.records).items()
        }

        def write(conn: sqlite3.Connection) -> None:
            def body() -> None:
                _insert_batch(conn, batch.batch_id, rows, written_s, finished=True)
                for day, values in by_day.items():
                    _absorb(conn, batch.batch_id, day, values)

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
        values = [_summary_row(k, t) for k, t in rows.items()]
        return await self._db.run(lambda conn: _transaction(conn, lambda: _absorb(conn, batch_id, day, values)))

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


def _record_rows(batch: UsageBatch) -> list[tuple[object, ...]]:
    return [
        (
            r.day,
            r.tenant,
            r.record_id,
            r.time_s,
            r.request_id,
            r.user,
            batch.batch_id,
            orjson.dumps(r),  # a dataclass: the bytes of orjson.dumps(record_to_dict(r)), half the work
        )
        for r in batch.records
    ]


def _insert_batch(
    conn: sqlite3.Connection, batch_id: str, rows: list[tuple[object, ...]], written_s: float, *, finished: bool
) -> None:
    conn.executemany(
        "INSERT OR IGNORE INTO usage_records (day, tenant, record_id, time_s, request_id, user, batch_id, data) "
        "VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
        rows,
    )
    # A batch written again finished (its summaries absorbed with it) is finished, whatever it was before.
    conn.execute(
        "INSERT INTO usage_batches (batch_id, written_s, finished) VALUES (?, ?, ?) "
        "ON CONFLICT (batch_id) DO UPDATE SET finished = max(finished, excluded.finished)",
        (batch_id, written_s, int(finished)),
    )


def _summary_row(key: SummaryKey, totals: SummaryTotals) -> tuple[object, ...]:
    return (key.day, key.tenant, key.user, key.deployment, key.model, *(getattr(totals, n) for n in _TOTALS))


def _absorb(conn: sqlite3.Connection, batch_id: str, day: str, values: list[tuple[object, ...]]) -> bool:
    """Inside a transaction: add ``values`` to the summaries unless ``batch_id`` was absorbed into ``day``."""
    if not conn.execute("INSERT OR IGNORE INTO usage_absorbed (batch_id, day) VALUES (?, ?)", (batch_id, day)).rowcount:
        return False  # absorbed before: the marker and the rows were committed together
    conn.executemany(_UPSERT_SUMMARY, values)
    return True


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
