"""One explicit table per port from URL scheme to adapter; Azure SDKs are imported only by their adapters.

The tables are typed by port, so mypy checks that each adapter class satisfies the port it is listed under.
The URL grammar (and which ports each scheme serves) lives in ``urls.py``, shared with the config model.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Mapping
from typing import TypeVar

from ..config import ConfigError
from ..store_urls import CosmosURL, MemoryURL, Port, SqliteURL, StoreURL, StoreURLError, TablesURL, parse_store_url
from ..store_urls import default_url as _default_url
from . import cosmos, memory, sqlite, sqlite_cache, sqlite_usage, tables, tables_queue, tables_usage
from .ports import CacheStore, CounterStore, HealthStore, UsageQueue, UsageStore

T = TypeVar("T")
COUNTERS: dict[str, Callable[..., CounterStore]] = {
    "memory": memory.MemoryCounters,
    "sqlite": sqlite.SqliteCounters,
    "cosmos": cosmos.CosmosCounters,
}
CACHES: dict[str, Callable[..., CacheStore]] = {
    "memory": memory.MemoryCache,
    "sqlite": sqlite_cache.SqliteCache,
    "cosmos": cosmos.CosmosCache,
}
HEALTH: dict[str, Callable[..., HealthStore]] = {
    "memory": memory.MemoryHealth,
    "sqlite": sqlite.SqliteHealth,
    "cosmos": cosmos.CosmosHealth,
}

USAGE: dict[str, Callable[..., UsageStore]] = {
    "memory": memory.MemoryUsage,
    "sqlite": sqlite_usage.SqliteUsage,
    "tables": tables_usage.TablesUsage,
}
# The queue that goes with each usage store: the embedded stores use the in-process queue (one per process; a
# batch whose message dies with its process is found by the summariser's sweep).
USAGE_QUEUES: dict[str, Callable[..., UsageQueue]] = {
    "memory": memory.MemoryQueue,
    "sqlite": memory.MemoryQueue,
    "tables": tables_queue.StorageQueue,  # aigw-usage, read by the Functions queue trigger too
}


def default_url(port: Port, env: Mapping[str, str]) -> str:
    """``AIGW_<PORT>_URL``; else Cosmos DB at ``COSMOS_ENDPOINT``; else SQLite under ./.aigw/ (``ConfigError``
    naming the variable when it does not parse)."""
    try:
        return _default_url(port, env)
    except StoreURLError as exc:
        raise ConfigError(str(exc)) from None


def counter_store(url: str, env: Mapping[str, str] | None = None) -> CounterStore:
    """The counters adapter for ``url``: ``memory://``, ``sqlite:///path``, ``cosmos://host/db?key_env=V``."""
    parsed = _parse(url, "counters")
    return _lookup(COUNTERS, parsed, "counters")(*_args(parsed, "counters", env))


def cache_store(url: str, env: Mapping[str, str] | None = None, max_bytes: int = 256 * 1024 * 1024) -> CacheStore:
    """The cache adapter for ``url``; ``max_bytes`` bounds a SQLite cache (least recently used entries go)."""
    parsed = _parse(url, "cache")
    extra = (max_bytes,) if isinstance(parsed, SqliteURL) else ()
    return _lookup(CACHES, parsed, "cache")(*_args(parsed, "cache", env), *extra)


def health_store(url: str, env: Mapping[str, str] | None = None) -> HealthStore:
    """The health adapter for ``url``."""
    parsed = _parse(url, "health")
    return _lookup(HEALTH, parsed, "health")(*_args(parsed, "health", env))


def usage_store(url: str, env: Mapping[str, str] | None = None) -> UsageStore:
    """The usage records and summaries adapter for ``url``: ``memory://``, ``sqlite:///path``, ``tables://...``."""
    parsed = _parse(url, "usage")
    return _lookup(USAGE, parsed, "usage")(*_args(parsed, "usage", env))


def usage_queue(url: str, env: Mapping[str, str] | None = None) -> UsageQueue:
    """The queue that goes with the usage store at ``url`` (in-process for memory:// and sqlite://; the Storage
    queue ``aigw-usage`` for tables://)."""
    parsed = _parse(url, "usage")
    opener = _lookup(USAGE_QUEUES, parsed, "usage")
    if isinstance(parsed, MemoryURL | SqliteURL):
        return opener()
    return opener(*_args(parsed, "usage", env))


def _parse(url: str, port: Port) -> StoreURL:
    try:
        return parse_store_url(url, port)
    except StoreURLError as exc:
        raise ConfigError(f"stores.{port}: {exc}") from None


def _lookup(table: dict[str, Callable[..., T]], url: StoreURL, port: Port) -> Callable[..., T]:
    opener = table.get(url.scheme)
    if opener is None:  # urls.SERVES lists a pair this table lacks: a test keeps the two in step
        raise ConfigError(f"stores.{port}: {url.scheme}:// does not serve the {port} store")
    return opener


def _args(url: StoreURL, port: Port, env: Mapping[str, str] | None) -> tuple[object, ...]:
    """The adapter's constructor arguments for ``url``."""
    if isinstance(url, SqliteURL):
        return (url.path,)
    if isinstance(url, CosmosURL):
        return (cosmos.CosmosTarget(url, _cosmos_key(url, port, os.environ if env is None else env)),)
    if isinstance(url, TablesURL):
        return (tables.TablesTarget(url, _connection_string(url, port, os.environ if env is None else env)),)
    return ()


def _cosmos_key(url: CosmosURL, port: Port, env: Mapping[str, str]) -> str | None:
    if url.key_env is None:
        return None
    key = env.get(url.key_env)
    if not key:
        raise ConfigError(f"stores.{port}: Cosmos DB key_env: environment variable {url.key_env} is not set")
    return key


def _connection_string(url: TablesURL, port: Port, env: Mapping[str, str]) -> str | None:
    if url.connection_env is None:
        return None
    value = env.get(url.connection_env)
    if not value:
        raise ConfigError(
            f"stores.{port}: Table Storage connection_env: environment variable {url.connection_env} is not set"
        )
    return value
