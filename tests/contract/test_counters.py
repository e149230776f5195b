"""One contract for every counters adapter, each against its real server."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from gateway_core.storage.factory import counter_store
from gateway_core.storage.ports import CounterAdd, CounterStore, StorageError
from tests.contract.conftest import ADAPTERS, store_url
from tests.servers import COSMOS_KEY_ENV


@pytest.fixture(params=ADAPTERS["counters"])
async def store(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[CounterStore]:
    adapter = counter_store(store_url(request.param, "counters", tmp_path, request), COSMOS_KEY_ENV)
    await adapter.start()
    yield adapter
    await adapter.close()


async def test_missing_counter_reads_zero(store: CounterStore) -> None:
    assert await store.get("tpm:r:nobody", 1_700_000_000) == 0


async def test_add_returns_running_total_per_key_and_window(store: CounterStore) -> None:
    assert await store.add("tpm:r:alice", 60, 100, 120) == 100
    assert await store.add("tpm:r:alice", 60, 50, 120) == 150
    assert await store.add("tpm:r:alice", 60, -30, 120) == 120
    assert await store.add("tpm:r:alice", 120, 7, 120) == 7
    assert await store.add("tpm:r:bob", 60, 1, 120) == 1
    assert await store.get("tpm:r:alice", 60) == 120
    assert await store.get("tpm:r:alice", 120) == 7


async def test_concurrent_adds_lose_nothing(store: CounterStore) -> None:
    results = await asyncio.gather(*(store.add("quota:r:tenant-x", 0, 3, 60) for _ in range(100)))
    assert await store.get("quota:r:tenant-x", 0) == 300
    assert sorted(results) == list(range(3, 301, 3))  # each add saw a distinct total


async def test_add_many_returns_each_new_total_in_order(store: CounterStore) -> None:
    assert await store.add_many([]) == []
    await store.add("tpm:r:alice", 60, 10, 120)
    adds = [
        CounterAdd("tpm:r:alice", 60, 5, 120),
        CounterAdd("quota:d:contoso", 0, 7, 90_000),
        CounterAdd("tpm:r:alice", 120, 1, 120),
        CounterAdd("tpm:r:alice", 60, -3, 120),  # the same counter twice: applied in order
    ]
    assert await store.add_many(adds) == [15, 7, 1, 12]
    assert await store.get("tpm:r:alice", 60) == 12
    assert await store.get("quota:d:contoso", 0) == 7


async def test_concurrent_add_many_lose_nothing_and_each_item_sees_a_distinct_total(store: CounterStore) -> None:
    batch = [CounterAdd("tpm:r:bob", 0, 2, 60), CounterAdd("quota:d:t", 0, 3, 60)]
    results = await asyncio.gather(*(store.add_many(batch) for _ in range(50)))
    assert await store.get("tpm:r:bob", 0) == 100 and await store.get("quota:d:t", 0) == 150
    assert sorted(r[0] for r in results) == list(range(2, 101, 2))
    assert sorted(r[1] for r in results) == list(range(3, 151, 3))


async def test_keys_with_odd_characters(store: CounterStore) -> None:
    key = "tpm:per-header:x-team:ops/α β?#"
    assert await store.add(key, 5, 2, 60) == 2
    assert await store.get(key, 5) == 2


async def test_unreachable_cosmos_raises_storage_error() -> None:
    adapter = counter_store("cosmos://127.0.0.1:9/db?key_env=AIGW_TEST_COSMOS_KEY", COSMOS_KEY_ENV)
    with pytest.raises(StorageError, match="Cosmos DB store"):
        await adapter.start()
    await adapter.close()


async def test_unwritable_sqlite_raises_storage_error(tmp_path: Path) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("not a directory")
    adapter = counter_store(f"sqlite:///{blocker}/counters.db")
    with pytest.raises(StorageError, match="SQLite store"):
        await adapter.add("k", 0, 1, 60)
    await adapter.close()


async def test_many_instances_starting_at_once_share_one_cosmos_container(cosmos_address: str) -> None:
    url = f"cosmos://{cosmos_address}/race{uuid.uuid4().hex[:8]}?key_env=AIGW_TEST_COSMOS_KEY&create_if_missing=true"
    adapters = [counter_store(url, COSMOS_KEY_ENV) for _ in range(6)]
    await asyncio.gather(*(a.start() for a in adapters))  # as 6 workers starting together
    totals = await asyncio.gather(*(a.add("k", 0, 1, 60) for a in adapters))
    assert sorted(totals) == [1, 2, 3, 4, 5, 6]
    await asyncio.gather(*(a.close() for a in adapters))


async def test_unwritable_sqlite_add_many_raises_storage_error(tmp_path: Path) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("not a directory")
    adapter = counter_store(f"sqlite:///{blocker}/counters.db")
    with pytest.raises(StorageError, match="SQLite store"):
        await adapter.add_many([CounterAdd("k", 0, 1, 60), CounterAdd("j", 0, 1, 60)])
    await adapter.close()
