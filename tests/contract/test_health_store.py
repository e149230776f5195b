"""One contract for every health store adapter, each against its real server."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from gateway_core.storage.factory import health_store
from gateway_core.storage.ports import HealthStore
from tests.contract.conftest import ADAPTERS, store_url
from tests.servers import COSMOS_KEY_ENV


@pytest.fixture(params=ADAPTERS)
async def store(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[HealthStore]:
    adapter = health_store(store_url(request.param, "health", tmp_path, request), COSMOS_KEY_ENV)
    await adapter.start()
    yield adapter
    await adapter.close()


async def test_publish_and_read_back_with_later_deadlines_winning(store: HealthStore) -> None:
    assert await store.read_all() == {}
    await store.publish("east", {"throttled_until_s": 100.0, "open_until_s": 0.0})
    await store.publish("west", {"throttled_until_s": 0.0, "open_until_s": 50.0})
    await store.publish("east", {"throttled_until_s": 90.0, "open_until_s": 10.0})  # an older throttle: kept 100
    assert await store.read_all() == {
        "east": {"throttled_until_s": 100.0, "open_until_s": 10.0},
        "west": {"throttled_until_s": 0.0, "open_until_s": 50.0},
    }
