"""One explicit table from (port, URL scheme) to adapter; Azure SDKs are imported only by their adapters."""

from __future__ import annotations

import os
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any, cast
from urllib.parse import urlsplit

from .ports import CacheStore, CounterStore, HealthStore, StorageError

DEFAULT_STATE_DIR = ".aigw"
_ENV_URL = {"counters": "AIGW_COUNTERS_URL", "cache": "AIGW_CACHE_URL", "health": "AIGW_HEALTH_URL"}


def _memory(port: str, url: str, env: Mapping[str, str], options: dict[str, Any]) -> Any:
    from . import memory

    return {"counters": memory.MemoryCounters, "cache": memory.MemoryCache, "health": memory.MemoryHealth}[port]()


def _sqlite(port: str, url: str, env: Mapping[str, str], options: dict[str, Any]) -> Any:
    from . import sqlite

    path = _sqlite_path(url)
    if port == "cache":
        return sqlite.SqliteCache(path, **options)
    return {"counters": sqlite.SqliteCounters, "health": sqlite.SqliteHealth}[port](path)


def _cosmos(port: str, url: str, env: Mapping[str, str], options: dict[str, Any]) -> Any:
    from . import cosmos

    target = cosmos.CosmosTarget(url, env)
    return {"counters": cosmos.CosmosCounters, "cache": cosmos.CosmosCache, "health": cosmos.CosmosHealth}[port](target)


_SCHEMES: dict[str, Callable[[str, str, Mapping[str, str], dict[str, Any]], Any]] = {
    "memory": _memory,
    "sqlite": _sqlite,
    "cosmos": _cosmos,
}


def default_url(port: str, env: Mapping[str, str]) -> str:
    """``AIGW_<PORT>_URL``; else Cosmos DB at ``COSMOS_ENDPOINT`` (the Functions app); else SQLite under ./.aigw/."""
    if env.get(_ENV_URL[port]):
        return env[_ENV_URL[port]]
    endpoint = env.get("COSMOS_ENDPOINT")
    if endpoint:
        netloc = urlsplit(endpoint).netloc or endpoint
        key = "?key_env=COSMOS_KEY" if env.get("COSMOS_KEY") else ""
        return f"cosmos://{netloc}/aigw{key}"
    return f"sqlite:///{DEFAULT_STATE_DIR}/{port}.db"


def _open(port: str, url: str, env: Mapping[str, str] | None, options: dict[str, Any]) -> Any:
    scheme = url.split("://", 1)[0] if "://" in url else ""
    factory = _SCHEMES.get(scheme)
    if factory is None:
        raise StorageError(f"unknown store URL {url!r}: use memory://, sqlite:///path or cosmos://host/database")
    return factory(port, url, os.environ if env is None else env, options)


def counter_store(url: str, env: Mapping[str, str] | None = None) -> CounterStore:
    """The counters adapter for ``url``: ``memory://``, ``sqlite:///path``, ``cosmos://host/db?key_env=V``."""
    return cast(CounterStore, _open("counters", url, env, {}))


def cache_store(url: str, env: Mapping[str, str] | None = None, max_bytes: int = 256 * 1024 * 1024) -> CacheStore:
    """The cache adapter for ``url``; ``max_bytes`` bounds a SQLite cache (least recently used entries go)."""
    return cast(CacheStore, _open("cache", url, env, {"max_bytes": max_bytes}))


def health_store(url: str, env: Mapping[str, str] | None = None) -> HealthStore:
    """The health adapter for ``url``."""
    return cast(HealthStore, _open("health", url, env, {}))


def _sqlite_path(url: str) -> Path:
    # sqlite:///relative/path and sqlite:////absolute/path, as SQLAlchemy spells them.
    rest = url[len("sqlite://") :]
    if not rest.startswith("/") or len(rest) < 2:
        raise StorageError(f"bad SQLite URL {url!r}: use sqlite:///relative/file.db or sqlite:////abs/file.db")
    return Path(rest[1:])
