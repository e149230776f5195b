"""The batched usage writer: size and age flushes off the request path, retries, the spill file and its replay."""

from __future__ import annotations

import asyncio
import logging
import os
import stat
import sys
import time
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

import orjson
import pytest

from gateway_core.config import UsageSettings
from gateway_core.storage.memory import MemoryQueue, MemoryUsage
from gateway_core.storage.ports import StorageError
from gateway_core.usage.record import (
    QueueMessage,
    RecordQuery,
    SummaryKey,
    SummaryQuery,
    SummaryTotals,
    UsageBatch,
    UsageRecord,
    record_to_dict,
)
from gateway_core.usage.writer import UsageWriter

DAY_S = 1_767_225_600.0  # 2026-01-01


class FlakyUsage(MemoryUsage):
    """A usage store that fails (as an unreachable store does) while ``down``; counts its write attempts."""

    def __init__(self) -> None:
        super().__init__()
        self.down = False
        self.write_attempts = 0

    async def write_batch(self, batch: UsageBatch) -> None:
        self.write_attempts += 1
        if self.down:
            raise StorageError("usage store: connection refused")
        await super().write_batch(batch)

    async def batch_records(self, batch_id: str) -> tuple[UsageRecord, ...] | None:
        if self.down:
            raise StorageError("usage store: connection refused")
        return await super().batch_records(batch_id)

    async def absorb(self, batch_id: str, day: str, rows: dict[SummaryKey, SummaryTotals]) -> bool:
        if self.down:
            raise StorageError("usage store: connection refused")
        return await super().absorb(batch_id, day, rows)


class DeafQueue(MemoryQueue):
    """A queue whose sends fail: the enqueue after a write is lost."""

    async def send(self, batch_id: str) -> None:
        raise StorageError("usage queue: connection refused")

    async def receive(self, max_messages: int, visibility_timeout_s: float) -> list[QueueMessage]:
        return []


def rec(n: int = 0, time_s: float = DAY_S) -> UsageRecord:
    return UsageRecord(
        record_id=uuid.uuid4().hex,
        time_s=time_s + n,
        request_id=f"req-{n}",
        tenant="contoso",
        user="alice",
        key_id="k",
        method="POST",
        path="/v1/chat/completions",
        status=200,
        deployment="gpt-4o",
        model="gpt-4o",
        prompt_tokens=10,
        completion_tokens=2,
        cost_micro_usd=45,
    )


def settings(tmp_path: Path, **overrides: Any) -> UsageSettings:
    values: dict[str, Any] = {"spill_dir": str(tmp_path / "spill"), "retry_initial_s": 0.01, **overrides}
    return UsageSettings(**values)


async def until(condition: Callable[[], bool], timeout_s: float = 10.0) -> None:
    deadline = time.monotonic() + timeout_s
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError("condition not met in time")
        await asyncio.sleep(0.01)


async def stored(store: MemoryUsage) -> list[UsageRecord]:
    return await store.records(RecordQuery("2000-01-01", "2100-01-01", limit=1000))


async def test_a_full_buffer_is_written_at_once_in_one_batch(tmp_path: Path) -> None:
    store, queue = MemoryUsage(), MemoryQueue()
    writer = UsageWriter(store, queue, settings(tmp_path, flush_max_records=5, flush_interval_s=60))
    writer.start()
    for n in range(5):
        writer.record(rec(n))
    await until(lambda: writer.written_records == 5)  # long before the 60 s age limit
    messages = await queue.receive(10, 30)
    assert len(messages) == 1
    batch = await store.batch_records(messages[0].body)
    assert batch is not None and len(batch) == 5
    await writer.close()


async def test_an_old_record_is_written_after_the_flush_interval(tmp_path: Path) -> None:
    store, queue = MemoryUsage(), MemoryQueue()
    writer = UsageWriter(store, queue, settings(tmp_path, flush_interval_s=0.2))
    writer.start()
    started = time.monotonic()
    writer.record(rec())
    await until(lambda: writer.written_records == 1)
    assert time.monotonic() - started >= 0.2
    assert len(await stored(store)) == 1
    await writer.close()


async def test_a_record_arriving_while_the_writer_idles_is_written_after_the_interval(tmp_path: Path) -> None:
    store = MemoryUsage()
    writer = UsageWriter(store, MemoryQueue(), settings(tmp_path, flush_interval_s=0.1))
    writer.start()
    await until(lambda: writer.idle)  # nothing buffered: the writer waits with no deadline
    writer.record(rec())
    await until(lambda: writer.written_records == 1)
    await writer.close()


async def test_record_returns_at_once_and_never_raises_even_with_the_store_down(tmp_path: Path) -> None:
    store = FlakyUsage()
    store.down = True
    writer = UsageWriter(store, MemoryQueue(), settings(tmp_path, flush_max_records=1))
    writer.start()
    writer.record(rec())  # no await: the request path never waits for the store
    assert store.write_attempts == 0
    await writer.close()


async def test_a_failed_write_is_retried_with_the_same_batch_and_stored_once(tmp_path: Path) -> None:
    store, queue = FlakyUsage(), MemoryQueue()
    store.down = True
    writer = UsageWriter(store, queue, settings(tmp_path, flush_max_records=3, spill_after_failures=100))
    writer.start()
    for n in range(3):
        writer.record(rec(n))
    await until(lambda: store.write_attempts >= 2)
    store.down = False
    await until(lambda: writer.written_records == 3)
    assert len(await stored(store)) == 3
    assert len(queue) == 1  # one batch, one message
    assert not (tmp_path / "spill").exists()
    await writer.close()


async def test_a_store_that_stays_down_gets_a_spill_file_replayed_when_it_answers(tmp_path: Path) -> None:
    store, queue = FlakyUsage(), MemoryQueue()
    store.down = True
    config = settings(tmp_path, flush_max_records=2, spill_after_failures=2, spill_after_s=0.2)
    writer = UsageWriter(store, queue, config)
    writer.start()
    records = [rec(n) for n in range(4)]
    for record in records:
        writer.record(record)
    await until(lambda: writer.spilled_records == 4)
    own = writer.spill.own
    assert stat.S_IMODE(own.stat().st_mode) == 0o600
    assert stat.S_IMODE(own.parent.stat().st_mode) == 0o700
    assert len(own.read_bytes().splitlines()) == 2  # two batches of two
    store.down = False
    # The writer tries again after spill_after_s. The replay file is removed (in a thread) after its last batch
    # is counted: wait for both, or the directory may still hold it when looked at.
    await until(lambda: writer.replayed_records == 4 and not any(own.parent.iterdir()))
    assert sorted(r.record_id for r in await stored(store)) == sorted(r.record_id for r in records)
    assert list(own.parent.iterdir()) == []
    assert len(queue) == 2
    await writer.close()


async def test_close_flushes_and_spills_what_the_store_will_not_take(tmp_path: Path) -> None:
    store = FlakyUsage()
    writer = UsageWriter(store, MemoryQueue(), settings(tmp_path, flush_interval_s=60))
    writer.start()
    for n in range(3):
        writer.record(rec(n))
    await writer.close()
    assert len(await stored(store)) == 3

    down = FlakyUsage()
    down.down = True
    writer = UsageWriter(down, MemoryQueue(), settings(tmp_path, flush_interval_s=60))
    writer.start()
    writer.record(rec())
    await writer.close()
    assert writer.spilled_records == 1 and down.write_attempts == 1  # one try at close, then the disk


async def test_spilled_batches_of_a_dead_process_are_replayed_at_start(tmp_path: Path) -> None:
    child = await asyncio.create_subprocess_exec(sys.executable, "-c", "pass")
    await child.wait()  # its pid is now a process that is gone
    spill_dir = tmp_path / "spill"
    spill_dir.mkdir()
    records = [rec(n) for n in range(3)]
    line = orjson.dumps({"batch_id": "b-dead", "records": [record_to_dict(r) for r in records]})
    (spill_dir / f"spill-{child.pid}.jsonl").write_bytes(line + b"\n{torn")
    (spill_dir / f"spill-{child.pid}.jsonl").chmod(0o600)  # as the writer makes them
    alive = spill_dir / f"spill-{os.getppid()}.jsonl"  # a live process's own file is left to it
    alive.write_bytes(line + b"\n")
    store, queue = MemoryUsage(), MemoryQueue()
    writer = UsageWriter(store, queue, settings(tmp_path))
    writer.start()
    # The replay file is removed (in a thread) after its last batch is counted: wait for both.
    await until(lambda: writer.replayed_records == 3 and len(list(spill_dir.iterdir())) == 1)
    assert sorted(r.record_id for r in await stored(store)) == sorted(r.record_id for r in records)
    assert [p.name for p in spill_dir.iterdir()] == [alive.name]
    await writer.close()


async def test_buffered_records_are_bounded_the_rest_spill_at_once(tmp_path: Path) -> None:
    store = FlakyUsage()
    store.down = True
    config = settings(tmp_path, max_buffered_records=10, flush_interval_s=60, spill_after_failures=100)
    writer = UsageWriter(store, MemoryQueue(), config)
    for n in range(25):
        writer.record(rec(n))
        assert writer.buffered_records <= 10
    assert writer.spilled_records >= 15
    await writer.close()


async def test_a_full_spill_file_drops_loudly(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    store = FlakyUsage()
    store.down = True
    writer = UsageWriter(
        store, MemoryQueue(), settings(tmp_path, spill_max_bytes=4096, flush_interval_s=60, flush_max_records=2)
    )
    with caplog.at_level(logging.ERROR, logger="aigw"):
        for n in range(20):
            writer.record(rec(n))
        await writer.flush()
    assert 0 < writer.spill.own.stat().st_size <= 4096
    assert writer.spill.dropped_records > 0
    assert "USAGE RECORDS LOST" in caplog.text
    await writer.close()


async def test_a_lost_enqueue_leaves_the_batch_stored_and_pending(tmp_path: Path) -> None:
    store = MemoryUsage()
    writer = UsageWriter(store, DeafQueue(), settings(tmp_path))
    writer.record(rec())
    await writer.flush()
    assert writer.written_records == 1 and writer.spilled_records == 0
    assert len(await store.pending_batches(time.time() + 1)) == 1
    assert await store.summaries(SummaryQuery("2000-01-01", "2100-01-01")) == {}
    await writer.close()


async def test_a_record_taken_after_close_is_spilled_not_lost(tmp_path: Path) -> None:
    writer = UsageWriter(MemoryUsage(), MemoryQueue(), settings(tmp_path))
    writer.start()
    await writer.close()
    writer.record(rec())  # a straggler (a stream's end) after shutdown began
    assert writer.spilled_records == 1 and writer.buffered_records == 0


async def dead_pid() -> int:
    child = await asyncio.create_subprocess_exec(sys.executable, "-c", "pass")
    await child.wait()  # its pid is now a process that is gone
    return child.pid


def plant(spill_dir: Path, pid: int, lines: list[object], mode: int = 0o600) -> Path:
    path = spill_dir / f"spill-{pid}.jsonl"
    path.write_bytes(b"".join(orjson.dumps(line) + b"\n" for line in lines))
    path.chmod(mode)
    return path


def forged(**fields: Any) -> dict[str, object]:
    return {**record_to_dict(rec()), "tenant": "fabrikam", "user": "bob", **fields}


async def test_a_spill_directory_others_can_write_is_not_trusted(tmp_path: Path) -> None:
    """rev3: a spill directory another user (or a 0000 umask) left open: the files in it may be anyone's, so
    none is replayed (set aside as .untrusted) and the directory is closed to 0700."""
    from gateway_core.usage.summariser import BatchNotFound, Summariser

    spill = tmp_path / "spill"
    spill.mkdir()
    spill.chmod(0o777)
    planted = plant(spill, await dead_pid(), [{"batch_id": "planted", "records": [forged(cost_micro_usd=5)]}])
    store, queue = MemoryUsage(), MemoryQueue()
    writer = UsageWriter(store, queue, settings(tmp_path))
    await writer.flush()
    with pytest.raises(BatchNotFound):  # what a planted queue message would find
        await Summariser(store, queue, settings(tmp_path)).process("planted")
    assert await stored(store) == []
    assert await store.summaries(SummaryQuery("2000-01-01", "2100-01-01")) == {}
    assert stat.S_IMODE(spill.stat().st_mode) == 0o700
    assert [p.name for p in spill.iterdir()] == [planted.name + ".untrusted"]
    writer.record(rec())  # the closed directory is ours again: spilling still works
    await writer.close()
    assert len(await stored(store)) == 1


async def test_a_spill_directory_of_another_user_is_refused(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    theirs = tmp_path / "spill"
    theirs.mkdir(mode=0o700)
    plant(theirs, await dead_pid(), [{"batch_id": "planted", "records": [forged()]}])
    os.chown(theirs / next(iter(os.listdir(theirs))), 65534, 65534)
    os.chown(theirs, 65534, 65534)  # nobody's (the tests run as root here, as in CI's container)
    store = FlakyUsage()
    writer = UsageWriter(store, MemoryQueue(), settings(tmp_path))
    with caplog.at_level(logging.ERROR, logger="aigw"):
        await writer.flush()  # no replay from it
        store.down = True
        writer.record(rec())
        await writer.close()  # nor spilling into it: the records are lost, loudly, and close does not raise
    assert await stored(store) == []
    assert writer.spilled_records == 0
    assert "not a directory of this user" in caplog.text and "USAGE RECORDS LOST" in caplog.text
    assert len(list(theirs.iterdir())) == 1


async def test_only_0600_spill_files_of_this_user_are_replayed(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    spill = tmp_path / "spill"
    spill.mkdir(mode=0o700)
    batch = {"batch_id": "b1", "records": [forged()]}
    readable = plant(spill, await dead_pid(), [batch], mode=0o644)
    link = spill / f"spill-{await dead_pid()}.jsonl"
    link.symlink_to(plant(tmp_path, 1, [batch]))  # a 0600 file of ours elsewhere, linked in
    store = MemoryUsage()
    writer = UsageWriter(store, MemoryQueue(), settings(tmp_path))
    with caplog.at_level(logging.ERROR, logger="aigw"):
        await writer.close()
    assert await stored(store) == []
    left = sorted([readable.name + ".untrusted", link.name + ".untrusted"])
    assert sorted(p.name for p in spill.iterdir()) == left  # for an operator; never claimed again
    assert "not a 0600 file of this user" in caplog.text


@pytest.mark.parametrize(
    "fields",
    [
        {"cost_micro_usd": -5_000_000_000},
        {"saved_micro_usd": -1},
        {"count": 1_000_000_000},
        {"count": 0},
        {"prompt_tokens": -1},
        {"completion_tokens": 10**12},
        {"prompt_tokens": 1.5},
        {"prompt_tokens": True},
        {"status": "200"},
        {"time_s": "soon"},
        {"time_s": -1.0},
        {"latency_ms": float("nan")},
        {"tenant": 7},
        {"tenant": "x" * 20_000},
        {"user": None},
        {"stream": 1},
        {"deployment": ["gpt-4o"]},
    ],
)
async def test_a_spilled_record_out_of_type_or_range_is_skipped(
    tmp_path: Path, caplog: pytest.LogCaptureFixture, fields: dict[str, object]
) -> None:
    spill = tmp_path / "spill"
    spill.mkdir(mode=0o700)
    good = rec()
    plant(
        spill,
        await dead_pid(),
        [{"batch_id": "bad", "records": [forged(**fields)]}, {"batch_id": "good", "records": [record_to_dict(good)]}],
    )
    store = MemoryUsage()
    writer = UsageWriter(store, MemoryQueue(), settings(tmp_path))
    with caplog.at_level(logging.ERROR, logger="aigw"):
        await writer.close()
    assert [r.record_id for r in await stored(store)] == [good.record_id]
    assert "line 1 is not a batch" in caplog.text
    assert list(spill.iterdir()) == []


async def test_a_spill_line_with_a_wrong_typed_field_is_skipped_not_fatal(tmp_path: Path) -> None:
    """rev3: a line whose ``time_s`` is a string used to reach ``write_batch`` and raise TypeError out of
    ``close`` (so out of ``Gateway.close``, before the stores closed), leaving the file to fail every start."""
    bad: dict[str, object] = {
        "record_id": "a",
        "time_s": "soon",
        "request_id": "",
        "tenant": "t",
        "user": "u",
        "key_id": None,
    }
    bad.update(method="", path="", status=200)
    spill = tmp_path / "spill"
    spill.mkdir(mode=0o700)
    plant(spill, 999_999_999, [{"batch_id": "x", "records": [bad]}])
    writer = UsageWriter(MemoryUsage(), MemoryQueue(), settings(tmp_path))
    await writer.close()
    assert not list(spill.glob("*.jsonl")), "the bad file is claimed again at every start"


class BrokenUsage(MemoryUsage):
    """A store whose write fails with something other than StorageError (a bug, an odd record)."""

    async def write_batch(self, batch: UsageBatch) -> None:
        raise TypeError("unsupported operand")


async def test_a_spill_file_whose_replay_raises_is_moved_aside_and_close_does_not_raise(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    spill = tmp_path / "spill"
    spill.mkdir(mode=0o700)
    plant(spill, await dead_pid(), [{"batch_id": "b1", "records": [record_to_dict(rec())]}])
    writer = UsageWriter(BrokenUsage(), MemoryQueue(), settings(tmp_path))
    with caplog.at_level(logging.ERROR, logger="aigw"):
        await writer.close()
    (left,) = spill.iterdir()
    assert left.name.endswith(".jsonl.bad")
    assert "could not be replayed: moved aside" in caplog.text


def test_every_record_field_has_a_spill_check() -> None:
    from gateway_core.usage import spill

    assert set(spill._FIELDS) == set(UsageRecord.__dataclass_fields__)


async def test_close_ends_the_writer_even_when_a_record_wakes_it_at_that_moment(tmp_path: Path) -> None:
    # The writer waits for its buffer's deadline; a record fills the buffer (waking it) and close() cancels it in
    # the same turn of the loop. On Python 3.11 asyncio.wait_for took that cancel for the wake-up, so the writer
    # went on for ever and close() waited for it.
    store = MemoryUsage()
    writer = UsageWriter(store, MemoryQueue(), settings(tmp_path, flush_interval_s=60, flush_max_records=2))
    writer.start()
    await until(lambda: writer.idle)
    writer.record(rec(1))  # wakes the writer, which then waits up to 60 s for the buffer's age
    await until(lambda: not writer._wake.is_set())
    task = writer._task
    writer.record(rec(2))  # a full buffer: wakes it again
    closing = asyncio.ensure_future(writer.close())
    done, _ = await asyncio.wait([closing], timeout=10)
    closing.cancel()  # a no-op once it is done
    assert closing in done and task is not None and task.done()
    assert writer.written_records == 2 and len(await stored(store)) == 2


async def test_a_cancelled_close_is_cancelled(tmp_path: Path) -> None:
    # A shutdown deadline that cancels close() while it waits for the writer's end is not swallowed by it (close()
    # suppressed every CancelledError from that wait, its caller's included).
    writer = UsageWriter(MemoryUsage(), MemoryQueue(), settings(tmp_path, flush_interval_s=60))
    writer.start()
    await until(lambda: writer.idle)
    writer.record(rec())
    closing = asyncio.ensure_future(writer.close())
    await asyncio.sleep(0)  # close() has cancelled the writer's task and waits for its end
    closing.cancel()
    with pytest.raises(asyncio.CancelledError):
        await closing
