from __future__ import annotations

import uuid
from pathlib import Path

import pytest

from tests.servers import COSMOS_KEY_ENV

# Every adapter of each port, by URL scheme (as limits' ALL_STORAGES): each port's contract tests run against
# each adapter listed for it; test_adapters_listed.py checks this table against the factory's.
ADAPTERS: dict[str, list[str]] = {
    "counters": ["memory", "sqlite", "cosmos"],
    "cache": ["memory", "sqlite", "cosmos"],
    "health": ["memory", "sqlite", "cosmos"],
    "usage": ["memory", "sqlite", "tables"],
}
# Adapters whose state is shared by every instance opened on one URL (memory is one process's own).
SHARED = ["sqlite", "cosmos", "tables"]
AZURITE_ENV = "AIGW_TEST_AZURITE"  # the connection string of the session's Azurite


def store_url(kind: str, port: str, tmp_path: Path, request: pytest.FixtureRequest) -> str:
    """A fresh store of ``kind`` for ``port``: its own SQLite file, or its own database on the Cosmos DB server."""
    if kind == "memory":
        return "memory://"
    if kind == "sqlite":
        return f"sqlite:///{tmp_path}/{port}.db"
    if kind == "tables":
        request.getfixturevalue("azurite")
        prefix = f"t{uuid.uuid4().hex[:12]}"  # its own tables and queues in the session's Azurite
        return f"tables://?connection_env={AZURITE_ENV}&create_if_missing=true&prefix={prefix}"
    address = request.getfixturevalue("cosmos_address")
    return f"cosmos://{address}/{port[0]}{uuid.uuid4().hex[:8]}?key_env=AIGW_TEST_COSMOS_KEY&create_if_missing=true"


def store_env(kind: str, request: pytest.FixtureRequest) -> dict[str, str]:
    """The environment a store URL of ``kind`` reads its key or connection string from."""
    if kind == "tables":
        return {AZURITE_ENV: request.getfixturevalue("azurite").connection_string}
    return dict(COSMOS_KEY_ENV)
