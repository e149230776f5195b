"""One contract for every health store adapter, each against its real server."""

from __future__ import annotations

import asyncio
import random
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from gateway_core.storage.factory import health_store
from gateway_core.storage.ports import HealthStore, SharedHealth
from tests.contract.conftest import ADAPTERS, store_url
from tests.servers import COSMOS_KEY_ENV


@pytest.fixture(params=ADAPTERS)
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


@pytest.mark.parametrize("kind", [a for a in ADAPTERS if a != "memory"])  # memory is one process's own
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
