"""The SQLite usage store's one-transaction path (``write_summarised``: records, summary rows and the finished
batch together, no queue message): exactly once against retries, against a batch the queue path had started
before a crash, against the sweep, and with two processes writing to one file."""

from __future__ import annotations

import asyncio
import sqlite3
import subprocess
import sys
from pathlib import Path

from gateway_core.config import UsageSettings
from gateway_core.storage.factory import usage_queue, usage_store
from gateway_core.storage.memory import MemoryQueue
from gateway_core.storage.ports import StorageError, SummarisingUsageStore
from gateway_core.storage.sqlite_usage import SqliteUsage
from gateway_core.usage.record import summarise
from gateway_core.usage.summariser import Summariser
from gateway_core.usage.writer import UsageWriter
from tests.contract.test_usage_store import DAY1_S, DAY2_S, absorb_all, all_records, all_summaries, batch, rec


async def open_store(path: Path) -> SqliteUsage:
    store = usage_store(f"sqlite:///{path}", {})
    assert isinstance(store, SqliteUsage)
    await store.start()
    return store


async def test_a_batch_is_stored_summarised_and_finished_at_once_and_a_retry_adds_nothing(tmp_path: Path) -> None:
    store = await open_store(tmp_path / "usage.db")
    try:
        b = batch(rec(), rec(DAY2_S, user="bob"), rec(prompt=7))
        await store.write_summarised(b)
        await store.write_summarised(b)  # a retry after a write whose answer was lost
        assert await all_summaries(store) == summarise(b.records)
        assert len(await all_records(store)) == 3
        assert await store.pending_batches(DAY2_S * 2) == []  # nothing for the sweep
    finally:
        await store.close()


async def test_a_failure_inside_the_transaction_leaves_nothing_and_the_retry_counts_once(tmp_path: Path) -> None:
    # As a crash between the steps of the queue path (records stored, summaries not): here there are no steps
    # to crash between. A trigger makes the summary rows' insert fail after the records' inserts ran.
    path = tmp_path / "usage.db"
    store = await open_store(path)
    conn = sqlite3.connect(path)
    conn.execute(
        "CREATE TRIGGER fail_summaries BEFORE INSERT ON usage_summaries BEGIN SELECT RAISE(ABORT, 'disk gone'); END"
    )
    conn.commit()
    try:
        b = batch(rec(), rec(DAY2_S))
        try:
            await store.write_summarised(b)
            raise AssertionError("the write should have failed")
        except StorageError:
            pass
        assert await all_records(store) == [] and await all_summaries(store) == {}
        assert await store.pending_batches(DAY2_S * 2) == []  # not even marked pending: nothing was written
        conn.execute("DROP TRIGGER fail_summaries")
        conn.commit()
        await store.write_summarised(b)  # the writer retries with the same batch
        assert await all_summaries(store) == summarise(b.records)
        assert len(await all_records(store)) == 2
    finally:
        conn.close()
        await store.close()


async def test_a_batch_the_queue_path_absorbed_in_part_before_a_crash_is_completed_once(tmp_path: Path) -> None:
    # An older worker wrote the batch, absorbed its first day and died before the second day and the finish;
    # the batch comes again through write_summarised (a spill file replayed): the first day is not added twice.
    store = await open_store(tmp_path / "usage.db")
    try:
        b = batch(rec(), rec(DAY2_S, user="bob"))
        await store.write_batch(b)
        rows = summarise(b.records)
        assert await store.absorb(b.batch_id, "2026-01-01", {k: v for k, v in rows.items() if k.day == "2026-01-01"})
        await store.write_summarised(b)
        assert await all_summaries(store) == rows
        assert await store.pending_batches(DAY2_S * 2) == []
        assert await absorb_all(store, b) == [False, False]  # a late message of the old path changes nothing
    finally:
        await store.close()


async def test_the_sweep_summarises_batches_an_older_version_left_pending_and_skips_the_rest(tmp_path: Path) -> None:
    store = await open_store(tmp_path / "usage.db")
    try:
        left = batch(rec(), rec(DAY2_S))  # written by the queue path, its message lost with its process
        await store.write_batch(left)
        done = batch(rec(user="carol"))
        await store.write_summarised(done)
        summariser = Summariser(store, usage_queue("sqlite:///unused.db", {}), UsageSettings())
        assert await summariser.sweep(0.0) == 1
        assert await summariser.sweep(0.0) == 0
        assert await all_summaries(store) == summarise([*left.records, *done.records])
    finally:
        await store.close()


async def test_the_writer_on_sqlite_summarises_as_it_writes_with_no_queue_message(tmp_path: Path) -> None:
    store = await open_store(tmp_path / "usage.db")
    queue = usage_queue(f"sqlite:///{tmp_path}/usage.db", {})
    assert isinstance(store, SummarisingUsageStore)
    writer = UsageWriter(store, queue, UsageSettings(spill_dir=str(tmp_path / "spill")))
    try:
        records = [rec(DAY1_S + n, user=f"u{n % 3}") for n in range(250)]
        for r in records:
            writer.record(r)
        await writer.flush()
        assert isinstance(queue, MemoryQueue) and len(queue) == 0
        assert await all_summaries(store) == summarise(records)
    finally:
        await writer.close()
        await store.close()


_WRITER = """
import asyncio, sys
from pathlib import Path
from gateway_core.config import UsageSettings
from gateway_core.storage.factory import usage_queue, usage_store
from gateway_core.usage.writer import UsageWriter
from tests.contract.test_usage_store import DAY1_S, rec

async def main(path, who, n):
    store, queue = usage_store(f"sqlite:///{path}", {}), usage_queue(f"sqlite:///{path}", {})
    await store.start()
    writer = UsageWriter(store, queue, UsageSettings(flush_max_records=7, spill_dir=f"{path}.{who}.spill"))
    writer.start()
    for i in range(n):
        writer.record(rec(DAY1_S + 86_000 + i % 800, user=who, tenant=f"t{i % 3}", prompt=i % 11, cost=i))
        if i % 50 == 0:
            await asyncio.sleep(0)  # let the background writer cut batches while records arrive
    await writer.close()
    await store.close()
    print(writer.written_records, writer.spilled_records)

asyncio.run(main(Path(sys.argv[1]), sys.argv[2], int(sys.argv[3])))
"""


async def test_two_processes_writing_one_file_count_every_record_once(tmp_path: Path) -> None:
    path = tmp_path / "usage.db"
    n = 1500
    procs = [
        await asyncio.create_subprocess_exec(
            sys.executable, "-c", _WRITER, str(path), who, str(n), stdout=subprocess.PIPE, cwd=Path.cwd()
        )
        for who in ("w1", "w2")
    ]
    outputs = [(await p.communicate())[0].decode().split() for p in procs]
    assert all(p.returncode == 0 for p in procs)
    assert outputs == [[str(n), "0"], [str(n), "0"]]  # all written, none spilled
    store = await open_store(path)
    try:
        summaries = await all_summaries(store)
        # The same records (ids aside) as the two writers made: summaries are the sum of each exactly once.
        made = [
            rec(DAY1_S + 86_000 + i % 800, user=who, tenant=f"t{i % 3}", prompt=i % 11, cost=i)
            for who in ("w1", "w2")
            for i in range(n)
        ]
        assert summaries == summarise(made)
        assert len({k.day for k in summaries}) == 2  # batches spanned midnight
        assert sum(t.requests for t in summaries.values()) == 2 * n
        assert await store.pending_batches(DAY2_S * 2) == []
    finally:
        await store.close()
