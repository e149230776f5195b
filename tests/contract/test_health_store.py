"""One contract for every health store adapter, each against its real server."""

from __future__ import annotations

import asyncio
import random
import uuid
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from gateway_core.storage.factory import health_store
from gateway_core.storage.ports import HealthStore, SharedHealth, StorageError
from tests.contract.conftest import ADAPTERS, SHARED, store_url
from tests.servers import COSMOS_KEY_ENV


@pytest.fixture(params=ADAPTERS["health"])
async def store(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[HealthStore]:
    adapter = health_store(store_url(request.param, "health", tmp_path, request), COSMOS_KEY_ENV)
    await adapter.start()
    yield adapter
    await adapter.close()


async def test_breaker_events_the_later_wins_and_throttles_the_later_deadline(store: HealthStore) -> None:
    assert await store.read_all() == SharedHealth({}, {})
    await store.publish_breaker("east", 130.0, 100.0)  # opened at 100 until 130
    await store.publish_breaker("east", 0.0, 110.0)  # closed by a success at 110
    await store.publish_breaker("east", 125.0, 95.0)  # an older open arriving late: ignored
    await store.publish_throttle("east", "gpt-4o", 100.0)
    await store.publish_throttle("east", "gpt-4o", 90.0)  # an earlier deadline: kept 100
    await store.publish_throttle("east", "gpt-4o-mini", 50.0)
    await store.publish_breaker("west", 150.0, 120.0)
    assert await store.read_all() == SharedHealth(
        {"east": (0.0, 110.0), "west": (150.0, 120.0)},
        {("east", "gpt-4o"): 100.0, ("east", "gpt-4o-mini"): 50.0},
    )


async def test_concurrent_publishes_leave_the_latest_event_and_deadline(store: HealthStore) -> None:
    events = list(range(1, 41))
    random.Random(3).shuffle(events)
    await asyncio.gather(
        *(store.publish_breaker("east", 0.0 if t % 2 else 1000.0 + t, float(t)) for t in events),
        *(store.publish_throttle("east", "gpt-4o", float(t)) for t in events),
    )
    shared = await store.read_all()
    assert shared.breakers == {"east": (1040.0, 40.0)}
    assert shared.throttles == {("east", "gpt-4o"): 40.0}


@pytest.mark.parametrize("kind", [a for a in ADAPTERS["health"] if a in SHARED])
async def test_two_adapters_on_one_store_see_each_others_events(
    kind: str, request: pytest.FixtureRequest, tmp_path: Path
) -> None:
    url = store_url(kind, "health2", tmp_path, request)
    first, second = health_store(url, COSMOS_KEY_ENV), health_store(url, COSMOS_KEY_ENV)
    await first.start()
    await second.start()
    try:
        await asyncio.gather(first.publish_breaker("east", 200.0, 10.0), second.publish_breaker("east", 0.0, 11.0))
        assert (await first.read_all()).breakers == {"east": (0.0, 11.0)}
    finally:
        await first.close()
        await second.close()


async def test_breakers_and_throttles_are_kept_apart_and_closed_breakers_stay_listed(store: HealthStore) -> None:
    await store.publish_throttle("east", "gpt-4o", 500.0)
    assert await store.read_all() == SharedHealth({}, {("east", "gpt-4o"): 500.0})
    await store.publish_breaker("east", 0.0, 300.0)  # a close is an event too: it must replace an older open
    await store.publish_throttle("east", "gpt-4o", 400.0)  # earlier deadline: ignored, breaker untouched
    assert await store.read_all() == SharedHealth({"east": (0.0, 300.0)}, {("east", "gpt-4o"): 500.0})


async def test_every_backend_and_deployment_reads_back_exactly(store: HealthStore) -> None:
    # Names use every character a backend or deployment name may have; times keep their fractions.
    backends = [f"aoai-{i}.east_2" for i in range(12)]
    deployments = ["gpt-4o", "gpt-4o-mini.2024_07", "text-embedding-3-small"]
    now = 1_800_000_000.125
    await asyncio.gather(*(store.publish_breaker(b, now + i + 30.5, now + i) for i, b in enumerate(backends)))
    await asyncio.gather(
        *(store.publish_throttle(b, d, now + j + 0.25) for b in backends for j, d in enumerate(deployments))
    )
    shared = await store.read_all()
    assert shared.breakers == {b: (now + i + 30.5, now + i) for i, b in enumerate(backends)}
    assert shared.throttles == {(b, d): now + j + 0.25 for b in backends for j, d in enumerate(deployments)}


@pytest.mark.parametrize("kind", [a for a in ADAPTERS["health"] if a in SHARED])
async def test_concurrent_publishes_from_several_instances_leave_the_latest(
    kind: str, request: pytest.FixtureRequest, tmp_path: Path
) -> None:
    # As several workers or Function instances publishing at once: the later event and deadline win.
    url = store_url(kind, "health3", tmp_path, request)
    instances = [health_store(url, COSMOS_KEY_ENV) for _ in range(4)]
    await asyncio.gather(*(i.start() for i in instances))
    try:
        events = list(range(1, 33))
        random.Random(7).shuffle(events)
        await asyncio.gather(
            *(instances[t % 4].publish_breaker("east", 1000.0 + t if t % 3 else 0.0, float(t)) for t in events),
            *(instances[t % 4].publish_throttle("east", "gpt-4o", float(t)) for t in events),
        )
        for instance in instances:
            shared = await instance.read_all()
            assert shared.breakers == {"east": (1032.0, 32.0)}
            assert shared.throttles == {("east", "gpt-4o"): 32.0}
    finally:
        await asyncio.gather(*(i.close() for i in instances))


@pytest.mark.parametrize("kind", [a for a in ADAPTERS["health"] if a in SHARED])
async def test_what_was_published_outlives_the_instance(
    kind: str, request: pytest.FixtureRequest, tmp_path: Path
) -> None:
    url = store_url(kind, "health4", tmp_path, request)
    first = health_store(url, COSMOS_KEY_ENV)
    await first.start()
    await first.publish_breaker("east", 130.0, 100.0)
    await first.publish_throttle("west", "gpt-4o", 90.0)
    await first.close()
    restarted = health_store(url, COSMOS_KEY_ENV)
    await restarted.start()
    try:
        assert await restarted.read_all() == SharedHealth({"east": (130.0, 100.0)}, {("west", "gpt-4o"): 90.0})
    finally:
        await restarted.close()


async def test_unreachable_cosmos_raises_storage_error() -> None:
    adapter = health_store(f"cosmos://127.0.0.1:9/h{uuid.uuid4().hex[:8]}?key_env=AIGW_TEST_COSMOS_KEY", COSMOS_KEY_ENV)
    with pytest.raises(StorageError, match="Cosmos DB store"):
        await adapter.start()
    await adapter.close()


async def test_unwritable_sqlite_raises_storage_error(tmp_path: Path) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("not a directory")
    adapter = health_store(f"sqlite:///{blocker}/health.db")
    with pytest.raises(StorageError, match="SQLite store"):
        await adapter.publish_breaker("east", 130.0, 100.0)
    with pytest.raises(StorageError, match="SQLite store"):
        await adapter.read_all()
    await adapter.close()
