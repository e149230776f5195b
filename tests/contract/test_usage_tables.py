"""What only the Table Storage adapters promise, against Azurite: the layout (escaped keys, chunked absorbs,
batches over many partitions), the queue's wire format as the Functions trigger reads it, errors as
``StorageError``, and exactly-once with Azurite stopped and restarted mid-run.

The shared usage contract (test_usage_store.py) runs against Azurite too (``ADAPTERS["usage"]``).
"""

from __future__ import annotations

import asyncio
import base64
import dataclasses
import json
import typing
import uuid
from collections.abc import AsyncIterator
from typing import Any

import pytest

from gateway_core.storage.factory import usage_queue, usage_store
from gateway_core.storage.ports import StorageError, UsageQueue, UsageStore
from gateway_core.storage.tables_entities import MAX_STRING_CHARS
from gateway_core.storage.tables_keys import record_partition, summary_row
from gateway_core.storage.tables_queue import POISON_QUEUE, QUEUE
from gateway_core.usage.record import RecordQuery, SummaryKey, SummaryQuery, UsageBatch, UsageRecord, summarise
from tests.azurite import Azurite
from tests.contract.test_usage_store import DAY1_S, DAY2_S, absorb_all, all_records, all_summaries, batch, rec

ENV = "AIGW_TEST_AZURITE"
FORBIDDEN_IN_KEYS = set("/\\#?") | {chr(c) for c in range(0x20)} | {chr(c) for c in range(0x7F, 0xA0)}


def tables_url(create: bool = True) -> tuple[str, str]:
    prefix = f"t{uuid.uuid4().hex[:12]}"
    create_option = "&create_if_missing=true" if create else ""
    return f"tables://?connection_env={ENV}{create_option}&prefix={prefix}", prefix


@pytest.fixture
async def store(azurite: Azurite) -> AsyncIterator[UsageStore]:
    adapter = usage_store(tables_url()[0], {ENV: azurite.connection_string})
    await adapter.start()
    yield adapter
    await adapter.close()


@pytest.fixture
async def queue_and_prefix(azurite: Azurite) -> AsyncIterator[tuple[UsageQueue, str]]:
    url, prefix = tables_url()
    adapter = usage_queue(url, {ENV: azurite.connection_string})
    await adapter.start()
    yield adapter, prefix
    await adapter.close()


def test_every_record_field_has_a_type_a_table_property_holds() -> None:
    # A field of another type (a list, a dict) would fail every batch's transaction, on every retry.
    allowed = {str, int, float, bool, type(None)}
    for name, hint in typing.get_type_hints(UsageRecord).items():
        assert set(typing.get_args(hint) or (hint,)) <= allowed, name


async def test_a_batch_of_250_records_over_3_tenants_and_2_days(store: UsageStore) -> None:
    # 6 partitions of ~42 records, one with 100+ (two transactions): every record back, by batch and by query.
    records = [
        rec(DAY1_S + n if n % 2 else DAY2_S + n, tenant=f"tenant-{n % 3}", user=f"u{n % 5}") for n in range(240)
    ] + [rec(DAY1_S + 500 + n, tenant="tenant-0", user="bulk") for n in range(10)]
    b = UsageBatch(uuid.uuid4().hex, tuple(records))
    await store.write_batch(b)
    got = await store.batch_records(b.batch_id)
    assert got is not None and sorted(r.record_id for r in got) == sorted(r.record_id for r in records)
    every = await store.records(RecordQuery("2026-01-01", "2026-01-02", limit=1000))
    assert [r.record_id for r in every] == [
        r.record_id for r in sorted(records, key=lambda r: (r.time_s, r.record_id), reverse=True)
    ]
    assert await absorb_all(store, b) == [True, True]
    assert await all_summaries(store) == summarise(records)
    tenant_1 = await store.records(RecordQuery("2026-01-01", "2026-01-02", tenant="tenant-1", limit=1000))
    assert len(tenant_1) == 80 and {r.tenant for r in tenant_1} == {"tenant-1"}


async def test_more_than_99_summary_rows_of_a_day_are_absorbed_in_chunks_exactly_once(store: UsageStore) -> None:
    # 250 users on one day: 250 summary rows, more than one transaction holds (100 operations with the marker).
    b = batch(*(rec(user=f"user-{n:03d}") for n in range(250)))
    await store.write_batch(b)
    assert await absorb_all(store, b) == [True]
    assert await absorb_all(store, b) == [False]
    rows = await all_summaries(store)
    assert len(rows) == 250 and rows == summarise(b.records)


HOSTILE_NAMES = [
    "a/b",
    "a\\b",
    "a#b",
    "a?b",
    "a|b",
    "a",  # a prefix of the others: its partition is its own
    "a!7Cb",  # the escape of "a|b", spelled out
    "~batch",
    "tab\there\nnewline\x00nul\x7fdel\x9f",
    "'quoted' \"names\" and spaces",
    "ünïcödé 租户 🙂",
    "",
    "x" * 5000,  # far over the 1 KiB a Table key holds
    "x" * 5000 + "y",  # differs from the one above only past the cut
]


async def test_hostile_tenant_and_user_names_round_trip_and_stay_apart(store: UsageStore) -> None:
    records = [rec(DAY1_S + n, tenant=name, user=name) for n, name in enumerate(HOSTILE_NAMES)]
    b = batch(*records)
    await store.write_batch(b)
    await absorb_all(store, b)
    for record in records:
        key = record_partition(record.day, record.tenant)
        assert not FORBIDDEN_IN_KEYS & set(key) and len(key) <= 120
        assert await store.records(RecordQuery("2026-01-01", "2026-01-01", tenant=record.tenant)) == [record]
        assert await store.records(RecordQuery("2026-01-01", "2026-01-01", user=record.user)) == [record]
        only = await store.summaries(SummaryQuery("2026-01-01", "2026-01-01", tenant=record.tenant))
        assert list(only) == [SummaryKey(record.day, record.tenant, record.user, "gpt-4o", "gpt-4o")]
        row = summary_row(next(iter(only)))
        assert not FORBIDDEN_IN_KEYS & set(row) and len(row) <= 420
    assert await all_summaries(store) == summarise(records)


async def test_a_filter_value_cannot_widen_the_query_to_another_tenant(store: UsageStore) -> None:
    b = batch(rec(tenant="contoso"), rec(tenant="fabrikam", user="bob", request_id="req-b"))
    await store.write_batch(b)
    await absorb_all(store, b)
    for injected in ("x' or tenant ne 'x", "x' or true or '", "contoso|", "contos", "contoso' or RowKey ge '"):
        query = RecordQuery("2026-01-01", "2026-01-01", tenant=injected, user=injected, request_id=injected)
        assert await store.records(query) == []
        assert await store.summaries(SummaryQuery("2026-01-01", "2026-01-01", tenant=injected)) == {}
    only = await store.records(RecordQuery("2026-01-01", "2026-01-01", tenant="fabrikam"))
    assert [r.request_id for r in only] == ["req-b"]


async def test_many_concurrent_absorbs_into_one_row_retry_on_etag_conflicts(store: UsageStore) -> None:
    batches = [batch(rec()) for _ in range(12)]
    for b in batches:
        await store.write_batch(b)
    results = await asyncio.gather(*(absorb_all(store, b) for b in batches))
    assert results == [[True]] * 12
    totals = (await all_summaries(store))[SummaryKey("2026-01-01", "contoso", "alice", "gpt-4o", "gpt-4o")]
    assert (totals.requests, totals.cost_micro_usd) == (12, 12 * 75)


async def test_nothing_is_created_unless_told_and_the_error_is_a_storage_error(azurite: Azurite) -> None:
    adapter = usage_store(tables_url(create=False)[0], {ENV: azurite.connection_string})
    await adapter.start()
    try:
        with pytest.raises(StorageError, match=r"Table Storage \(\$AIGW_TEST_AZURITE\): write batch") as exc:
            await adapter.write_batch(batch(rec()))
        assert "AccountKey" not in str(exc.value) and "Eby8" not in str(exc.value)
    finally:
        await adapter.close()


async def test_an_unreachable_store_is_a_storage_error(azurite: Azurite) -> None:
    closed = azurite.connection_string.replace(f":{azurite.ports['Table']}/", ":9/")
    adapter = usage_store(tables_url()[0], {ENV: closed})
    with pytest.raises(StorageError, match="create tables"):
        await adapter.start()
    await adapter.close()


async def test_a_malformed_connection_string_is_a_storage_error_that_does_not_echo_it() -> None:
    secret = "AccountName=x;AccountKey=c2VjcmV0LXZhbHVl;Bogus"
    for adapter in (usage_store(tables_url()[0], {ENV: secret}), usage_queue(tables_url()[0], {ENV: secret})):
        with pytest.raises(StorageError, match=r"\$AIGW_TEST_AZURITE\): connect") as exc:
            await adapter.start()
        assert "c2VjcmV0" not in str(exc.value)
        await adapter.close()


async def test_long_strings_are_cut_so_one_record_never_fails_its_batch(store: UsageStore) -> None:
    # A String property holds 32K UTF-16 characters: a 40,000-character path would fail the whole transaction.
    long = dataclasses.replace(rec(), path="/" + "p" * 40_000, request_id="r" * 40_000)
    b = batch(long, rec())
    await store.write_batch(b)
    [back, _] = sorted(await all_records(store), key=lambda r: len(r.path), reverse=True)
    assert back.path == long.path[:MAX_STRING_CHARS] and back.request_id == long.request_id[:MAX_STRING_CHARS]
    assert back.record_id == long.record_id


async def raw_queue(azurite: Azurite, name: str) -> Any:
    from azure.storage.queue.aio import QueueClient

    return QueueClient.from_connection_string(azurite.connection_string, name)


async def test_messages_are_base64_as_the_functions_trigger_decodes_them(
    azurite: Azurite, queue_and_prefix: tuple[UsageQueue, str]
) -> None:
    queue, prefix = queue_and_prefix
    await queue.send("batch-ü/1")
    async with await raw_queue(azurite, prefix + QUEUE) as raw:
        [message] = await raw.peek_messages()
        # The Functions host base64-decodes queue messages (its default messageEncoding) before the trigger.
        assert base64.b64decode(message.content, validate=True).decode() == "batch-ü/1"
    [got] = await queue.receive(1, 30)
    assert (got.body, got.dequeue_count) == ("batch-ü/1", 1)


async def test_a_poisoned_message_says_which_batch_and_why(
    azurite: Azurite, queue_and_prefix: tuple[UsageQueue, str]
) -> None:
    queue, prefix = queue_and_prefix
    await queue.send("batch-7")
    [got] = await queue.receive(1, 30)
    await queue.poison(got, "no batch of that id was written")
    assert await queue.receive(1, 1) == []
    async with await raw_queue(azurite, prefix + POISON_QUEUE) as raw:
        [message] = await raw.peek_messages()
        body = json.loads(base64.b64decode(message.content))
    assert body == {"batch_id": "batch-7", "reason": "no batch of that id was written", "dequeue_count": 1}


async def test_a_message_that_is_not_base64_is_received_as_it_is(
    azurite: Azurite, queue_and_prefix: tuple[UsageQueue, str]
) -> None:
    queue, prefix = queue_and_prefix
    async with await raw_queue(azurite, prefix + QUEUE) as raw:
        await raw.send_message("not base64 at all!")
    [got] = await queue.receive(1, 30)
    assert got.body == "not base64 at all!"  # the summariser poisons it; later messages still come through
    await queue.send("batch-8")
    assert [m.body for m in await queue.receive(5, 30)] == ["batch-8"]


class CountingTable:
    """A table client that counts the entities its queries hand over (the real one underneath)."""

    def __init__(self, table: Any) -> None:
        self.table = table
        self.read = 0

    def query_entities(self, *args: Any, **kwargs: Any) -> Any:
        pages = self.table.query_entities(*args, **kwargs)

        async def counted() -> Any:
            async for entity in pages:
                self.read += 1
                yield entity

        return counted()

    def __getattr__(self, name: str) -> Any:
        return getattr(self.table, name)


async def test_a_records_query_on_table_storage_reads_no_more_than_its_limit_needs() -> None:
    """rev3: ``records`` read every matching entity of the newest day (and of each wider span after it) into
    memory, then kept ``limit``: a key holder's own million 400s of a day made each ``/usage/records?limit=1``
    pull a million entities. Here a table that answers every query with 20,000 entities (as a dense day does)."""
    from gateway_core.storage.tables_entities import record_entity
    from gateway_core.storage.tables_usage import TablesUsage

    consumed = 0
    entity = record_entity(UsageRecord("r", 1_767_312_000.0, "q", "contoso", "mallory", None, "POST", "/", 400), "b")

    class Table:
        def query_entities(self, query: str, parameters: dict[str, Any], **kwargs: Any) -> Any:
            async def entities() -> Any:
                nonlocal consumed
                for n in range(20_000):
                    consumed += 1
                    yield {**entity, "record_id": f"r{n}"}

            return entities()

    store = TablesUsage.__new__(TablesUsage)
    store._records = Table()
    store._lock = None  # type: ignore[assignment]
    store._target = type("T", (), {"where": "fake"})()
    found = await store.records(RecordQuery("2026-01-02", "2026-01-02", tenant="contoso", user="mallory", limit=1))
    assert len(found) == 1
    assert consumed <= 1000, f"{consumed} entities read for a limit of 1"


async def test_records_come_newest_first_from_dense_windows_reading_few_entities(store: UsageStore) -> None:
    """The time-window walk against Azurite: a dense last ten minutes of a day (one record a second, 40 in one
    millisecond, another tenant interleaved), older and newer days around it: every limit and filter gives
    exactly the newest records, and a small limit reads a small part of the day."""
    from gateway_core.storage.tables_usage import TablesUsage

    end_s = DAY2_S  # midnight: the records fill the last ten minutes of 2026-01-01
    dense = [rec(end_s - 600 + n, user=f"u{n % 3}") for n in range(600)]
    same_ms = [rec(end_s - 30.0004, user="u0") for _ in range(40)]
    others = [rec(end_s - 300 + n + 0.5, tenant="fabrikam") for n in range(200)]
    older = [rec(DAY1_S + 60 * n) for n in range(30)]
    newer = [rec(DAY2_S + 5)]
    everything = dense + same_ms + others + older + newer
    for n in range(0, len(everything), 100):
        await store.write_batch(batch(*everything[n : n + 100]))
    tables = typing.cast(TablesUsage, store)
    counting = CountingTable(tables._records)
    tables._records = counting

    def newest(records: list[UsageRecord], limit: int) -> list[str]:
        return [r.record_id for r in sorted(records, key=lambda r: (r.time_s, r.record_id), reverse=True)[:limit]]

    day1 = [r for r in everything if r.day == "2026-01-01"]
    for query, expected in [
        (RecordQuery("2026-01-01", "2026-01-01", limit=5), newest(day1, 5)),
        (RecordQuery("2026-01-01", "2026-01-01", limit=100), newest(day1, 100)),
        (RecordQuery("2026-01-01", "2026-01-01", limit=1000), newest(day1, 1000)),
        (RecordQuery("2025-12-01", "2026-01-09", limit=3), newest(everything, 3)),
        (RecordQuery("2025-12-01", "2026-01-09", limit=1000), newest(everything, 1000)),
        (
            RecordQuery("2026-01-01", "2026-01-01", tenant="contoso", user="u0", limit=50),
            newest([r for r in day1 if r.tenant == "contoso" and r.user == "u0"], 50),
        ),
        (RecordQuery("2026-01-01", "2026-01-02", tenant="fabrikam", limit=7), newest(others, 7)),
        (RecordQuery("2025-12-01", "2025-12-31", limit=10), []),
    ]:
        counting.read = 0
        assert [r.record_id for r in await tables.records(query)] == expected, query
        if query.limit <= 5:  # a few small windows (and a few narrowed), not the day's 870 or the range's 1,100
            assert counting.read <= 400, f"{counting.read} entities read for {query}"
