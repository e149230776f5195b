"""One contract for every usage adapter (records, batches, summaries absorbed exactly once) and its queue."""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from gateway_core.storage.factory import usage_queue, usage_store
from gateway_core.storage.ports import UsageQueue, UsageStore
from gateway_core.usage.record import (
    QueueMessage,
    RecordQuery,
    SummaryKey,
    SummaryQuery,
    SummaryTotals,
    UsageBatch,
    UsageRecord,
    summarise,
)
from tests.contract.conftest import ADAPTERS, SHARED, store_env, store_url

DAY1_S = 1_767_225_600.0  # 2026-01-01T00:00:00Z
DAY2_S = DAY1_S + 86_400  # 2026-01-02


@pytest.fixture(params=ADAPTERS["usage"])
async def store(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[UsageStore]:
    adapter = usage_store(store_url(request.param, "usage", tmp_path, request), store_env(request.param, request))
    await adapter.start()
    yield adapter
    await adapter.close()


@pytest.fixture(params=ADAPTERS["usage"])
async def queue(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[UsageQueue]:
    adapter = usage_queue(store_url(request.param, "usage", tmp_path, request), store_env(request.param, request))
    await adapter.start()
    yield adapter
    await adapter.close()


def rec(
    time_s: float = DAY1_S,
    *,
    user: str = "alice",
    tenant: str = "contoso",
    request_id: str | None = None,
    deployment: str = "gpt-4o",
    prompt: int = 10,
    completion: int = 5,
    cost: int | None = 75,
    status: int = 200,
) -> UsageRecord:
    record_id = uuid.uuid4().hex
    return UsageRecord(
        record_id=record_id,
        time_s=time_s,
        request_id=request_id or record_id,
        tenant=tenant,
        user=user,
        key_id="k1",
        method="POST",
        path=f"/openai/deployments/{deployment}/chat/completions",
        status=status,
        deployment=deployment,
        model=deployment,
        prompt_tokens=prompt,
        completion_tokens=completion,
        cost_micro_usd=cost,
    )


def batch(*records: UsageRecord) -> UsageBatch:
    return UsageBatch(uuid.uuid4().hex, records)


async def absorb_all(store: UsageStore, b: UsageBatch) -> list[bool]:
    rows = summarise(b.records)
    done = []
    for day in b.days:
        done.append(await store.absorb(b.batch_id, day, {k: v for k, v in rows.items() if k.day == day}))
    return done


async def all_summaries(store: UsageStore) -> dict[SummaryKey, SummaryTotals]:
    return await store.summaries(SummaryQuery("2000-01-01", "2100-01-01"))


async def all_records(store: UsageStore) -> list[UsageRecord]:
    return await store.records(RecordQuery("2000-01-01", "2100-01-01", limit=1000))


async def test_a_batch_written_twice_leaves_one_copy_of_each_record(store: UsageStore) -> None:
    b = batch(rec(), rec(DAY2_S), rec(user="bob"))
    await store.write_batch(b)
    await store.write_batch(b)
    assert sorted(r.record_id for r in await all_records(store)) == sorted(r.record_id for r in b.records)
    got = await store.batch_records(b.batch_id)
    assert got is not None and sorted(got, key=lambda r: r.record_id) == sorted(b.records, key=lambda r: r.record_id)


async def test_records_round_trip_every_field(store: UsageStore) -> None:
    full = UsageRecord(
        record_id="r-1",
        time_s=DAY1_S + 1.25,
        request_id="req-α/β",
        tenant="ten|ant/#?",
        user="ü\\ser",
        key_id=None,
        method="POST",
        path="/v1/chat/completions",
        status=429,
        deployment=None,
        model=None,
        backend="sim-east",
        region="eastus",
        stream=True,
        prompt_tokens=1,
        completion_tokens=2,
        cached_prompt_tokens=1,
        reasoning_tokens=1,
        token_source="counted",
        cost_micro_usd=None,
        cache="HIT",
        saved_tokens=3,
        saved_micro_usd=4,
        attempts=2,
        ttfb_ms=1.5,
        latency_ms=2.5,
        limit_rule="per-user",
        error_code="rate_limit_exceeded",
        internal=True,
        client_ip="127.0.0.1",
        count=7,
    )
    await store.write_batch(batch(full))
    assert await all_records(store) == [full]


async def test_an_unknown_batch_has_no_records(store: UsageStore) -> None:
    assert await store.batch_records("no-such-batch") is None
    empty = batch()
    await store.write_batch(empty)
    assert await store.batch_records(empty.batch_id) == ()


async def test_absorb_counts_a_batch_once(store: UsageStore) -> None:
    b = batch(rec(), rec(cost=None), rec(DAY2_S, status=500))
    await store.write_batch(b)
    assert await absorb_all(store, b) == [True, True]
    assert await absorb_all(store, b) == [False, False]  # redelivered: nothing changes
    assert await all_summaries(store) == summarise(b.records)
    key = SummaryKey("2026-01-01", "contoso", "alice", "gpt-4o", "gpt-4o")
    totals = (await all_summaries(store))[key]
    assert (totals.requests, totals.cost_micro_usd, totals.unpriced, totals.prompt_tokens) == (2, 75, 1, 20)


async def test_concurrent_absorbs_into_the_same_rows_lose_nothing(store: UsageStore) -> None:
    batches = [batch(rec(), rec(user="bob")) for _ in range(20)]
    for b in batches:
        await store.write_batch(b)
    # Every batch twice, all at once: each (batch, day) counts once and no update is lost.
    results = await asyncio.gather(*(absorb_all(store, b) for b in [*batches, *batches]))
    assert sum(r == [True] for r in results) == 20
    expected = summarise([r for b in batches for r in b.records])
    assert await all_summaries(store) == expected
    assert expected[SummaryKey("2026-01-01", "contoso", "bob", "gpt-4o", "gpt-4o")].requests == 20


@pytest.mark.parametrize("kind", [a for a in ADAPTERS["usage"] if a in SHARED])
async def test_two_instances_on_one_store_absorb_each_batch_once(
    kind: str, request: pytest.FixtureRequest, tmp_path: Path
) -> None:
    # As two workers (or two Function instances) handed the same messages at once.
    url = store_url(kind, "usage2", tmp_path, request)
    env = store_env(kind, request)
    first, second = usage_store(url, env), usage_store(url, env)
    await first.start()
    await second.start()
    try:
        batches = [batch(rec(), rec(DAY2_S, user="bob")) for _ in range(10)]
        for b in batches:
            await first.write_batch(b)
            await second.write_batch(b)
        runs = [absorb_all(store, b) for b in batches for store in (first, second)]
        results = await asyncio.gather(*runs)
        assert sum(r.count(True) for r in results) == 20  # each (batch, day) once, by one of the two
        expected = summarise([r for b in batches for r in b.records])
        assert await all_summaries(first) == expected == await all_summaries(second)
        assert len(await all_records(second)) == 20
    finally:
        await first.close()
        await second.close()


async def test_batches_absorbed_out_of_order_converge(store: UsageStore) -> None:
    first, second = batch(rec(DAY2_S)), batch(rec(DAY1_S), rec(DAY2_S))
    for b in (first, second):
        await store.write_batch(b)
    await absorb_all(store, second)
    await absorb_all(store, first)
    await absorb_all(store, second)
    assert await all_summaries(store) == summarise([*first.records, *second.records])


async def test_pending_until_finished(store: UsageStore) -> None:
    a, b = batch(rec()), batch(rec())
    await store.write_batch(a)
    await store.write_batch(b)
    assert await store.pending_batches(time.time() - 3600) == []  # none written that long ago
    assert sorted(await store.pending_batches(time.time() + 1)) == sorted([a.batch_id, b.batch_id])
    await store.finish_batch(a.batch_id)
    await store.finish_batch(a.batch_id)
    assert await store.pending_batches(time.time() + 1) == [b.batch_id]
    await store.write_batch(a)  # a retried write of a finished batch does not make it pending again
    assert await store.pending_batches(time.time() + 1) == [b.batch_id]


async def test_record_filters_and_order(store: UsageStore) -> None:
    old = rec(DAY1_S, request_id="req-1")
    mid = rec(DAY1_S + 60, user="bob", tenant="fabrikam")
    new = rec(DAY2_S, request_id="req-1")
    await store.write_batch(batch(old, mid, new))
    every = RecordQuery("2026-01-01", "2026-01-02")
    assert await store.records(every) == [new, mid, old]  # newest first
    assert await store.records(RecordQuery("2026-01-01", "2026-01-02", limit=2)) == [new, mid]
    assert await store.records(RecordQuery("2026-01-01", "2026-01-01")) == [mid, old]
    assert await store.records(RecordQuery("2026-01-02", "2026-01-02")) == [new]
    assert await store.records(RecordQuery("2026-01-01", "2026-01-02", request_id="req-1")) == [new, old]
    assert await store.records(RecordQuery("2026-01-01", "2026-01-02", tenant="fabrikam")) == [mid]
    assert await store.records(RecordQuery("2026-01-01", "2026-01-02", user="alice")) == [new, old]
    assert await store.records(RecordQuery("2026-01-01", "2026-01-02", tenant="fabrikam", user="alice")) == []
    assert await store.records(RecordQuery("2025-12-01", "2025-12-31")) == []


async def test_summary_filters(store: UsageStore) -> None:
    b = batch(rec(), rec(user="bob", tenant="fabrikam"), rec(DAY2_S), rec(DAY2_S, deployment="gpt-4o-mini"))
    await store.write_batch(b)
    await absorb_all(store, b)
    rows = summarise(b.records)
    assert await store.summaries(SummaryQuery("2026-01-02", "2026-01-02")) == {
        k: v for k, v in rows.items() if k.day == "2026-01-02"
    }
    assert await store.summaries(SummaryQuery("2026-01-01", "2026-01-02", tenant="fabrikam")) == {
        k: v for k, v in rows.items() if k.tenant == "fabrikam"
    }
    assert await store.summaries(SummaryQuery("2026-01-01", "2026-01-02", user="alice")) == {
        k: v for k, v in rows.items() if k.user == "alice"
    }
    assert await store.summaries(SummaryQuery("2026-01-03", "2026-01-09")) == {}


async def test_the_queue_delivers_at_least_once(queue: UsageQueue) -> None:
    await queue.send("batch-1")
    await queue.send("batch-2")
    first = await queue.receive(1, 30)
    assert [(m.body, m.dequeue_count) for m in first] == [("batch-1", 1)]
    second = await queue.receive(10, 30)
    assert [m.body for m in second] == ["batch-2"]  # batch-1 is invisible while it is being processed
    assert await queue.receive(10, 30) == []
    await queue.delete(first[0])
    await queue.poison(second[0], "a test")
    assert await queue.receive(10, 30) == []


async def receive_soon(queue: UsageQueue, visibility_timeout_s: float) -> QueueMessage:
    """The next message, once one is visible again (within 10 s)."""
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        got = await queue.receive(1, visibility_timeout_s)
        if got:
            return got[0]
        await asyncio.sleep(0.05)
    raise AssertionError("no message became visible")


async def test_a_message_not_deleted_comes_back_after_its_visibility_timeout(queue: UsageQueue) -> None:
    await queue.send("batch-1")
    stale = await receive_soon(queue, 0.05)
    again = await receive_soon(queue, 0.05)
    assert (again.body, again.dequeue_count) == ("batch-1", 2)
    await queue.delete(stale)  # the first delivery's receipt no longer deletes it
    third = await receive_soon(queue, 30)
    assert (third.body, third.dequeue_count) == ("batch-1", 3)
    await queue.delete(third)
    assert await queue.receive(1, 0) == []


def test_a_user_keys_records_query_on_sqlite_does_not_scan_everyones_records() -> None:
    """rev3: any key may ask ``/usage/records?from=<a year ago>``; on SQLite that searched the primary key by
    day only, reading every tenant's and user's records of the year and sorting them in a temp B-tree, on the
    store's one connection thread. An index on (tenant, user, time_s, record_id) makes it a seek, in order."""
    import sqlite3

    from gateway_core.storage.sqlite_usage import _USAGE_SCHEMA, _usage_filters

    conn = sqlite3.connect(":memory:")
    conn.executescript(_USAGE_SCHEMA)
    where, args = _usage_filters("2025-01-03", "2026-01-02", "contoso", "mallory")
    sql = f"SELECT data FROM usage_records WHERE {where} ORDER BY time_s DESC, record_id DESC LIMIT ?"
    plan = " | ".join(row[3] for row in conn.execute(f"EXPLAIN QUERY PLAN {sql}", (*args, 1)))
    assert "tenant=? AND user=?" in plan and "TEMP B-TREE" not in plan, plan


async def test_an_existing_sqlite_usage_file_gets_the_user_index(tmp_path: Path) -> None:
    import sqlite3

    from gateway_core.storage.sqlite_usage import _USAGE_SCHEMA

    path = tmp_path / "usage.db"
    conn = sqlite3.connect(path)
    conn.executescript(_USAGE_SCHEMA.replace("CREATE INDEX IF NOT EXISTS usage_records_user", "-- ", 1))
    conn.close()
    adapter = usage_store(f"sqlite:///{path}", {})
    await adapter.start()
    await adapter.close()
    conn = sqlite3.connect(path)
    names = {row[0] for row in conn.execute("SELECT name FROM sqlite_master WHERE type = 'index'")}
    conn.close()
    assert "usage_records_user" in names
