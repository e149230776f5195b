"""The summariser: redelivered, concurrent and lost messages all converge to the sum of the records."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from gateway_core.config import UsageSettings
from gateway_core.storage.factory import usage_store
from gateway_core.storage.memory import MemoryQueue, MemoryUsage
from gateway_core.storage.ports import UsageStore
from gateway_core.usage.record import RecordQuery, SummaryQuery, UsageBatch, summarise
from gateway_core.usage.summariser import BatchNotFound, Summariser
from gateway_core.usage.writer import UsageWriter
from tests.unit.test_usage_writer import DAY_S, FlakyUsage, rec, until

EVERYTHING = SummaryQuery("2000-01-01", "2100-01-01")


@pytest.fixture(params=["memory", "sqlite"])
async def store(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[UsageStore]:
    url = "memory://" if request.param == "memory" else f"sqlite:///{tmp_path}/usage.db"
    adapter = usage_store(url)
    await adapter.start()
    yield adapter
    await adapter.close()


def written(*days_s: float) -> UsageBatch:
    return UsageBatch(f"batch-{time.monotonic_ns()}", tuple(rec(n, day) for n, day in enumerate(days_s)))


async def test_the_same_message_twice_counts_once(store: UsageStore) -> None:
    queue = MemoryQueue()
    summariser = Summariser(store, queue, UsageSettings())
    batch = written(DAY_S, DAY_S, DAY_S + 86_400)
    await store.write_batch(batch)
    await queue.send(batch.batch_id)
    await queue.send(batch.batch_id)  # at-least-once: delivered twice
    for message in await queue.receive(10, 30):
        await summariser.handle(message)
    assert len(queue) == 0
    assert await store.summaries(EVERYTHING) == summarise(batch.records)
    assert await store.pending_batches(time.time() + 1) == []


async def test_two_batches_processed_concurrently_twice_each(store: UsageStore) -> None:
    summariser = Summariser(store, MemoryQueue(), UsageSettings())
    batches = [written(DAY_S, DAY_S + 1) for _ in range(2)]
    for batch in batches:
        await store.write_batch(batch)
    await asyncio.gather(*(summariser.process(b.batch_id) for b in [*batches, *batches]))
    assert await store.summaries(EVERYTHING) == summarise([r for b in batches for r in b.records])


async def test_a_lost_enqueue_is_found_by_the_sweep(store: UsageStore) -> None:
    summariser = Summariser(store, MemoryQueue(), UsageSettings())
    lost = written(DAY_S)
    await store.write_batch(lost)  # ... and the message never went on the queue
    assert await summariser.sweep(3600) == 0  # written just now: not yet "older than an hour"
    assert await summariser.sweep(0) == 1
    assert await summariser.sweep(0) == 0  # finished: not pending any more
    assert await store.summaries(EVERYTHING) == summarise(lost.records)


async def test_a_message_for_a_missing_batch_is_retried_then_poisoned_with_a_reason(
    caplog: pytest.LogCaptureFixture,
) -> None:
    store, queue = MemoryUsage(), MemoryQueue()
    summariser = Summariser(store, queue, UsageSettings(max_dequeues=3))
    with pytest.raises(BatchNotFound):
        await summariser.process("never-written")
    await queue.send("never-written")
    for delivery in range(1, 4):
        (message,) = await queue.receive(1, 0)  # visible again at once
        assert message.dequeue_count == delivery
        with caplog.at_level(logging.ERROR, logger="aigw"):
            await summariser.handle(message)
    assert len(queue) == 0
    assert queue.poisoned == [
        ("never-written", "usage batch 'never-written' was not found in the usage store (after 3 deliveries)")
    ]


async def test_a_message_written_before_its_batch_arrives_is_summarised_on_redelivery() -> None:
    store, queue = MemoryUsage(), MemoryQueue()
    summariser = Summariser(store, queue, UsageSettings())
    batch = written(DAY_S)
    await queue.send(batch.batch_id)
    (first,) = await queue.receive(1, 0)
    await summariser.handle(first)  # not there yet: left for redelivery
    await store.write_batch(batch)
    (second,) = await queue.receive(1, 0)
    await summariser.handle(second)
    assert len(queue) == 0 and await store.summaries(EVERYTHING) == summarise(batch.records)


async def test_a_message_that_is_no_batch_id_is_poisoned_at_once() -> None:
    queue = MemoryQueue()
    summariser = Summariser(MemoryUsage(), queue, UsageSettings())
    await queue.send("../../etc/passwd\n" * 20)
    (message,) = await queue.receive(1, 30)
    await summariser.handle(message)
    assert [reason for _, reason in queue.poisoned] == ["the message is not a usage batch id"]


async def test_a_store_outage_leaves_messages_for_redelivery() -> None:
    store, queue = FlakyUsage(), MemoryQueue()
    summariser = Summariser(store, queue, UsageSettings())
    batch = written(DAY_S)
    await store.write_batch(batch)
    await queue.send(batch.batch_id)
    store.down = True
    (message,) = await queue.receive(1, 0)
    await summariser.handle(message)
    assert len(queue) == 1 and queue.poisoned == []
    store.down = False
    (again,) = await queue.receive(1, 0)
    await summariser.handle(again)
    assert await store.summaries(EVERYTHING) == summarise(batch.records)


async def test_writer_queue_and_consumer_loop_summaries_equal_the_records(tmp_path: Path) -> None:
    store = usage_store(f"sqlite:///{tmp_path}/usage.db")
    await store.start()
    queue = MemoryQueue()
    config = UsageSettings(flush_max_records=7, flush_interval_s=0.05, spill_dir=str(tmp_path / "spill"))
    writer, summariser = UsageWriter(store, queue, config), Summariser(store, queue, config)
    writer.start()
    consumer = asyncio.get_running_loop().create_task(summariser.run_forever())
    records = [rec(n, DAY_S + (n % 3) * 86_400) for n in range(50)]
    for record in records:
        writer.record(record)
        await asyncio.sleep(0)
    await until(lambda: writer.written_records == 50)
    await until(lambda: len(queue) == 0)
    consumer.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await consumer
    await writer.close()
    assert len(await store.records(RecordQuery("2000-01-01", "2100-01-01", limit=1000))) == 50
    assert await store.summaries(EVERYTHING) == summarise(records)
    assert await store.pending_batches(time.time() + 1) == []
    await store.close()


async def test_an_in_process_queue_nobody_consumes_stays_bounded_and_the_sweep_finds_the_dropped() -> None:
    store, queue = MemoryUsage(), MemoryQueue(max_messages=3)
    batches = [written(DAY_S) for _ in range(5)]
    for batch in batches:
        await store.write_batch(batch)
        await queue.send(batch.batch_id)
    assert (len(queue), queue.dropped) == (3, 2)
    assert [m.body for m in await queue.receive(10, 30)] == [b.batch_id for b in batches[2:]]  # the newest kept
    assert await Summariser(store, queue, UsageSettings()).sweep(0) == 5
    assert await store.summaries(EVERYTHING) == summarise([r for b in batches for r in b.records])
