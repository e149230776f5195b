from __future__ import annotations

import uuid
from pathlib import Path

import pytest

ADAPTERS = ["memory", "sqlite", "cosmos"]


def store_url(kind: str, port: str, tmp_path: Path, request: pytest.FixtureRequest) -> str:
    """A fresh store of ``kind`` for ``port``: its own SQLite file, or its own database on the Cosmos DB server."""
    if kind == "memory":
        return "memory://"
    if kind == "sqlite":
        return f"sqlite:///{tmp_path}/{port}.db"
    address = request.getfixturevalue("cosmos_address")
    return f"cosmos://{address}/{port[0]}{uuid.uuid4().hex[:8]}?key_env=AIGW_TEST_COSMOS_KEY"
