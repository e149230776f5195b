"""One explicit table from URL scheme to adapter."""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path
from urllib.parse import urlsplit

from .ports import CacheStore, CounterStore, HealthStore, StorageError

DEFAULT_STATE_DIR = ".aigw"


def default_counters_url(env: Mapping[str, str]) -> str:
    """``AIGW_COUNTERS_URL``; else Cosmos DB at ``COSMOS_ENDPOINT`` (the Functions app); else SQLite under ./.aigw/."""
    if env.get("AIGW_COUNTERS_URL"):
        return env["AIGW_COUNTERS_URL"]
    endpoint = env.get("COSMOS_ENDPOINT")
    if endpoint:
        netloc = urlsplit(endpoint).netloc or endpoint
        key = "?key_env=COSMOS_KEY" if env.get("COSMOS_KEY") else ""
        return f"cosmos://{netloc}/aigw{key}"
    return f"sqlite:///{DEFAULT_STATE_DIR}/counters.db"


def default_cache_url(env: Mapping[str, str]) -> str:
    """``AIGW_CACHE_URL``; else Cosmos DB at ``COSMOS_ENDPOINT``; else SQLite under ./.aigw/."""
    if env.get("AIGW_CACHE_URL"):
        return env["AIGW_CACHE_URL"]
    counters = default_counters_url({k: v for k, v in env.items() if k != "AIGW_COUNTERS_URL"})
    return counters.replace("counters.db", "cache.db")


def cache_store(url: str, env: Mapping[str, str] | None = None, max_bytes: int = 256 * 1024 * 1024) -> CacheStore:
    """The cache adapter for ``url`` (same schemes as ``counter_store``); ``max_bytes`` bounds SQLite."""
    env = os.environ if env is None else env
    scheme = url.split("://", 1)[0] if "://" in url else ""
    if scheme == "memory":
        from .memory import MemoryCache

        return MemoryCache()
    if scheme == "sqlite":
        from .sqlite import SqliteCache

        return SqliteCache(_sqlite_path(url), max_bytes)
    if scheme == "cosmos":
        from .cosmos import CosmosCache, CosmosTarget

        return CosmosCache(CosmosTarget(url, env))
    raise StorageError(f"unknown store URL {url!r}: use memory://, sqlite:///path or cosmos://host/database")


def counter_store(url: str, env: Mapping[str, str] | None = None) -> CounterStore:
    """The counters adapter for ``url``: ``memory://``, ``sqlite:///path``, ``cosmos://host/db?key_env=V``."""
    env = os.environ if env is None else env
    scheme = url.split("://", 1)[0] if "://" in url else ""
    if scheme == "memory":
        from .memory import MemoryCounters

        return MemoryCounters()
    if scheme == "sqlite":
        from .sqlite import SqliteCounters

        return SqliteCounters(_sqlite_path(url))
    if scheme == "cosmos":
        from .cosmos import CosmosCounters, CosmosTarget

        return CosmosCounters(CosmosTarget(url, env))
    raise StorageError(f"unknown store URL {url!r}: use memory://, sqlite:///path or cosmos://host/database")


def _sqlite_path(url: str) -> Path:
    # sqlite:///relative/path and sqlite:////absolute/path, as SQLAlchemy spells them.
    rest = url[len("sqlite://") :]
    if not rest.startswith("/") or len(rest) < 2:
        raise StorageError(f"bad SQLite URL {url!r}: use sqlite:///relative/file.db or sqlite:////abs/file.db")
    return Path(rest[1:])


def default_health_url(env: Mapping[str, str]) -> str:
    """``AIGW_HEALTH_URL``; else Cosmos DB at ``COSMOS_ENDPOINT``; else SQLite under ./.aigw/."""
    if env.get("AIGW_HEALTH_URL"):
        return env["AIGW_HEALTH_URL"]
    counters = default_counters_url({k: v for k, v in env.items() if k != "AIGW_COUNTERS_URL"})
    return counters.replace("counters.db", "health.db")


def health_store(url: str, env: Mapping[str, str] | None = None) -> HealthStore:
    """The health adapter for ``url`` (same schemes as ``counter_store``)."""
    env = os.environ if env is None else env
    scheme = url.split("://", 1)[0] if "://" in url else ""
    if scheme == "memory":
        from .memory import MemoryHealth

        return MemoryHealth()
    if scheme == "sqlite":
        from .sqlite import SqliteHealth

        return SqliteHealth(_sqlite_path(url))
    if scheme == "cosmos":
        from .cosmos import CosmosHealth, CosmosTarget

        return CosmosHealth(CosmosTarget(url, env))
    raise StorageError(f"unknown store URL {url!r}: use memory://, sqlite:///path or cosmos://host/database")
