"""Cosmos DB adapters create nothing unless the URL says create_if_missing=true (in Azure, Bicep creates the
database and containers: the app's identity has data-plane roles only, which cannot)."""

from __future__ import annotations

import uuid
from collections.abc import Callable, Mapping
from typing import Any

import pytest

from gateway_core.storage.factory import cache_store, counter_store, health_store
from gateway_core.storage.ports import StorageError
from tests.servers import COSMOS_KEY_ENV

OPENERS: dict[str, Callable[[str, Mapping[str, str]], Any]] = {
    "counters": counter_store,
    "cache": cache_store,
    "health": health_store,
}


def url(address: str, database: str, create: bool | None) -> str:
    option = "" if create is None else f"&create_if_missing={str(create).lower()}"
    return f"cosmos://{address}/{database}?key_env=AIGW_TEST_COSMOS_KEY{option}"


@pytest.mark.parametrize("port", list(OPENERS))
async def test_a_missing_database_is_an_error_that_says_how_to_create_it(cosmos_address: str, port: str) -> None:
    database = f"none{uuid.uuid4().hex[:8]}"
    store = OPENERS[port](url(cosmos_address, database, None), COSMOS_KEY_ENV)
    try:
        with pytest.raises(StorageError) as exc:
            await store.start()
        message = str(exc.value)
        assert f"database {database!r}" in message and f"container {port!r}" in message
        assert "create it with infra/main.bicep, or set create_if_missing=true for an emulator" in message
        # Still missing on the next try (the store retries on first use): nothing was created.
        with pytest.raises(StorageError, match=f"database {database!r}"):
            await store.start()
    finally:
        await store.close()


@pytest.mark.parametrize("port", list(OPENERS))
async def test_a_missing_container_is_named(cosmos_address: str, port: str) -> None:
    database = f"part{uuid.uuid4().hex[:8]}"
    other = next(p for p in OPENERS if p != port)
    creator = OPENERS[other](url(cosmos_address, database, True), COSMOS_KEY_ENV)
    await creator.start()  # the database and another port's container exist
    await creator.close()
    store = OPENERS[port](url(cosmos_address, database, False), COSMOS_KEY_ENV)
    try:
        with pytest.raises(StorageError) as exc:
            await store.start()
        assert f"container {port!r} of database {database!r} does not exist" in str(exc.value)
    finally:
        await store.close()


async def test_create_if_missing_creates_what_a_plain_url_then_opens(cosmos_address: str) -> None:
    database = f"made{uuid.uuid4().hex[:8]}"
    creator = counter_store(url(cosmos_address, database, True), COSMOS_KEY_ENV)
    assert await creator.add("k", 0, 2, 60) == 2
    await creator.close()
    plain = counter_store(url(cosmos_address, database, None), COSMOS_KEY_ENV)
    try:
        await plain.start()
        assert await plain.add("k", 0, 3, 60) == 5
    finally:
        await plain.close()
