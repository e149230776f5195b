"""Cosmos DB adapters (``cosmos://host[:port]/database?key_env=VAR``): the Azure default.

Counters: one document per (key, window) in container ``counters``, partitioned by the key (``/pk``), the
window start as the id, updated by atomic ``patch_item`` ``incr``; a missing document is created, and a
creation race (409) falls back to the patch. Each document carries ``ttl`` so Cosmos DB deletes it after the
window; callers also ignore old windows by arithmetic, so an emulator without TTL still answers rightly.
Without ``key_env`` the adapter authenticates with ``DefaultAzureCredential`` (managed identity in Azure).
The database and containers must exist (infra/main.bicep creates them: a data-plane identity cannot) unless
the URL says ``create_if_missing=true`` (emulators, keyed accounts): then the first start creates them.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import math
from collections.abc import Callable, Sequence
from typing import Any

from ..cache.vectors import cosine
from ..store_urls import CosmosURL
from .ports import CacheEntry, CounterAdd, SharedHealth, StorageError

_MERGE_TRIES = 20  # conditional writes of one health document before giving up
# What the adapters expect to find; infra/modules/cosmos.bicep creates the same (tests/infra checks the two agree).
COUNTERS_CONTAINER = "counters"
CACHE_CONTAINER = "cache"
HEALTH_CONTAINER = "health"
PARTITION_KEY_PATH = "/pk"
VECTOR_PATH = "/vector"  # where a cache entry keeps its embedding (the container's vector policy indexes it)


class CosmosTarget:
    """Where a ``cosmos://`` URL points: endpoint, database, and the key (None: ``DefaultAzureCredential``)."""

    def __init__(self, url: CosmosURL, key: str | None) -> None:
        self.endpoint = url.endpoint
        self.database = url.database
        self.create_if_missing = url.create_if_missing
        self.key = key

    def client(self) -> tuple[Any, Any]:
        """A client and the credential to close with it (None for a key)."""
        from azure.cosmos.aio import CosmosClient

        if self.key is not None:
            return CosmosClient(self.endpoint, credential=self.key), None
        from azure.identity.aio import DefaultAzureCredential

        # AZURE_CLIENT_ID, when set, selects the user-assigned managed identity (DefaultAzureCredential reads it).
        credential = DefaultAzureCredential()
        return CosmosClient(self.endpoint, credential=credential), credential


class _Container:
    """One container of the aigw database, opened on first use (a store unreachable at start is retried then).

    Every adapter below is one of these plus its own item operations; SDK errors become ``StorageError``.
    """

    def __init__(self, target: CosmosTarget, container: str) -> None:
        self._target = target
        self._container_name = container
        self._client: Any = None
        self._credential: Any = None
        self._container: Any = None
        self._lock = asyncio.Lock()

    async def start(self) -> None:
        """Open the container; ``StorageError`` if it cannot be reached or (without create_if_missing) is missing."""
        from azure.core.exceptions import AzureError

        async with self._lock:
            if self._container is not None:
                return
            if self._client is None:
                self._client, self._credential = self._target.client()
            try:
                if self._target.create_if_missing:
                    self._container = await self._create()
                else:
                    self._container = await self._open()
            except (AzureError, OSError) as exc:
                raise self._error(exc) from exc

    async def _open(self) -> Any:
        """The existing container, read once so that a missing one is reported now, naming what is missing."""
        from azure.cosmos.exceptions import CosmosResourceNotFoundError

        database = self._client.get_database_client(self._target.database)
        container = database.get_container_client(self._container_name)
        try:
            await container.read()
        except CosmosResourceNotFoundError:
            try:
                await database.read()
                missing = f"container {self._container_name!r} of database {self._target.database!r}"
            except CosmosResourceNotFoundError:
                missing = f"database {self._target.database!r} (with container {self._container_name!r})"
            raise StorageError(
                f"Cosmos DB store {self._target.endpoint} ({self._container_name}): {missing} does not exist: "
                "create it with infra/main.bicep, or set create_if_missing=true for an emulator"
            ) from None
        return container

    async def _create(self) -> Any:
        from azure.cosmos.exceptions import CosmosResourceExistsError

        # *_if_not_exists reads, then creates: several workers starting at once can race (409); a later try
        # then finds what the winner created.
        for _ in range(2):
            try:
                return await self._create_once()
            except CosmosResourceExistsError:
                continue
        return await self._create_once()

    async def _create_once(self) -> Any:
        from azure.cosmos import PartitionKey

        database = await self._client.create_database_if_not_exists(self._target.database)
        # default_ttl=-1: TTL on, each document sets its own.
        return await database.create_container_if_not_exists(
            id=self._container_name, partition_key=PartitionKey(path=PARTITION_KEY_PATH), default_ttl=-1
        )

    async def _ready(self) -> Any:
        if self._container is None:
            await self.start()
        return self._container

    def _error(self, exc: BaseException) -> StorageError:
        return StorageError(f"Cosmos DB store {self._target.endpoint} ({self._container_name}): {_short(exc)}")

    async def close(self) -> None:
        if self._client is not None:
            await self._client.close()
            self._client = None
            self._container = None
        if self._credential is not None:
            await self._credential.close()
            self._credential = None


class CosmosCounters(_Container):
    def __init__(self, target: CosmosTarget, container: str = COUNTERS_CONTAINER) -> None:
        super().__init__(target, container)

    async def add(self, key: str, window: int, amount: int, ttl_s: int) -> int:
        await self._ready()
        from azure.core.exceptions import AzureError
        from azure.cosmos.exceptions import CosmosResourceExistsError, CosmosResourceNotFoundError

        doc_id = str(window)
        operations = [{"op": "incr", "path": "/value", "value": amount}]
        try:
            try:
                item = await self._container.patch_item(item=doc_id, partition_key=key, patch_operations=operations)
            except CosmosResourceNotFoundError:
                try:
                    item = await self._container.create_item({"id": doc_id, "pk": key, "value": amount, "ttl": ttl_s})
                except CosmosResourceExistsError:  # another instance created it first: add to theirs
                    item = await self._container.patch_item(item=doc_id, partition_key=key, patch_operations=operations)
            return int(item["value"])
        except (AzureError, OSError) as exc:
            raise self._error(exc) from exc

    async def add_many(self, adds: Sequence[CounterAdd]) -> list[int]:
        """The adds at once (``asyncio.gather``), not one transactional batch: a Cosmos DB batch is bound to one
        partition key, and each counter key is its own partition. If any add fails, the ones that were applied
        are taken back (best effort) before ``StorageError`` is raised. Adds to the same counter run one after
        another, in order, so each returns the total after it (run at once, they returned totals out of order)."""
        results: list[int | BaseException] = [0] * len(adds)
        same_counter: dict[tuple[str, int], list[int]] = {}
        for index, add in enumerate(adds):
            same_counter.setdefault((add.key, add.window), []).append(index)

        async def in_order(indexes: list[int]) -> None:
            for index in indexes:
                try:
                    results[index] = await self.add(*adds[index])
                except Exception as exc:  # noqa: BLE001 - collected, undone and re-raised below
                    results[index] = exc

        await asyncio.gather(*(in_order(indexes) for indexes in same_counter.values()))
        failure = next((r for r in results if isinstance(r, BaseException)), None)
        if failure is None:
            return [r for r in results if isinstance(r, int)]
        undo = [add for add, result in zip(adds, results, strict=True) if isinstance(result, int)]
        await asyncio.gather(*(self.add(a.key, a.window, -a.amount, a.ttl_s) for a in undo), return_exceptions=True)
        raise failure

    async def get(self, key: str, window: int) -> int:
        await self._ready()
        from azure.core.exceptions import AzureError
        from azure.cosmos.exceptions import CosmosResourceNotFoundError

        try:
            item = await self._container.read_item(item=str(window), partition_key=key)
        except CosmosResourceNotFoundError:
            return 0
        except (AzureError, OSError) as exc:
            raise self._error(exc) from exc
        return int(item["value"])


class CosmosCache(_Container):
    """Cache entries in container ``cache``: partitioned by bucket, the key as id, ``ttl`` for expiry.

    Semantic lookups use Cosmos DB vector search (``VectorDistance``) where the container has a vector
    policy; where the server lacks it (the emulator, older accounts) they fall back to reading the bucket's
    vectors and ranking them here. The fallback is what the tests exercise.
    """

    def __init__(self, target: CosmosTarget, container: str = CACHE_CONTAINER) -> None:
        super().__init__(target, container)
        self._vector_search = True  # until the server shows it cannot

    async def get(self, bucket: str, key: str, now_s: float) -> CacheEntry | None:
        await self._ready()
        from azure.core.exceptions import AzureError
        from azure.cosmos.exceptions import CosmosResourceNotFoundError

        try:
            item = await self._container.read_item(item=key, partition_key=bucket)
        except CosmosResourceNotFoundError:
            return None
        except (AzureError, OSError) as exc:
            raise self._error(exc) from exc
        entry = _cache_entry(item)
        return entry if entry.expires_s > now_s else None

    async def put(self, entry: CacheEntry) -> None:
        await self._ready()
        from azure.core.exceptions import AzureError

        item: dict[str, Any] = {
            "id": entry.key,
            "pk": entry.bucket,
            "body": base64.b64encode(entry.body).decode(),
            "created_s": entry.created_s,
            "expires_s": entry.expires_s,
            "ttl": max(1, math.ceil(entry.expires_s - entry.created_s)),
            "prompt_tokens": entry.prompt_tokens,
            "completion_tokens": entry.completion_tokens,
        }
        if entry.vector is not None:
            item["vector"] = list(entry.vector)
        try:
            await self._container.upsert_item(item)
        except (AzureError, OSError) as exc:
            raise self._error(exc) from exc

    async def nearest(self, bucket: str, vector: tuple[float, ...], now_s: float) -> tuple[CacheEntry, float] | None:
        await self._ready()
        from azure.core.exceptions import AzureError

        params: list[dict[str, Any]] = [
            {"name": "@b", "value": bucket},
            {"name": "@now", "value": now_s},
            {"name": "@v", "value": list(vector)},
        ]
        try:
            if self._vector_search:
                try:
                    query = (
                        "SELECT TOP 1 c.id, VectorDistance(c.vector, @v) AS score FROM c "
                        "WHERE c.pk = @b AND c.expires_s > @now AND IS_DEFINED(c.vector) "
                        "ORDER BY VectorDistance(c.vector, @v)"
                    )
                    rows = [
                        r async for r in self._container.query_items(query, parameters=params, partition_key=bucket)
                    ]
                    if not rows:
                        return None
                    entry = await self.get(bucket, rows[0]["id"], now_s)
                    return (entry, float(rows[0]["score"])) if entry is not None else None
                except AzureError:
                    self._vector_search = False  # no vector policy or no support: rank here from now on
            query = "SELECT c.id, c.vector FROM c WHERE c.pk = @b AND c.expires_s > @now AND IS_DEFINED(c.vector)"
            rows = [r async for r in self._container.query_items(query, parameters=params[:2], partition_key=bucket)]
        except (AzureError, OSError) as exc:
            raise self._error(exc) from exc
        best: tuple[str, float] | None = None
        for row in rows:
            score = cosine(tuple(row["vector"]), vector)
            if best is None or score > best[1]:
                best = (row["id"], score)
        if best is None:
            return None
        entry = await self.get(bucket, best[0], now_s)
        return (entry, best[1]) if entry is not None else None


def _cache_entry(item: dict[str, Any]) -> CacheEntry:
    vector = item.get("vector")
    return CacheEntry(
        key=item["id"],
        bucket=item["pk"],
        body=base64.b64decode(item["body"]),
        created_s=float(item["created_s"]),
        expires_s=float(item["expires_s"]),
        prompt_tokens=int(item.get("prompt_tokens", 0)),
        completion_tokens=int(item.get("completion_tokens", 0)),
        vector=tuple(vector) if vector is not None else None,
    )


class CosmosHealth(_Container):
    """Backend health in container ``health``: one document per breaker (``b:<backend>``) and per throttled
    (backend, deployment) (``t:<sha256>``), each its own partition. Writes are conditional on the document's
    ETag and retried on a race, so concurrent publishes never put an earlier event over a later one."""

    def __init__(self, target: CosmosTarget, container: str = HEALTH_CONTAINER) -> None:
        super().__init__(target, container)

    async def publish_breaker(self, backend: str, open_until_s: float, event_s: float) -> None:
        fields = {"kind": "breaker", "backend": backend, "open_until_s": open_until_s, "event_s": event_s}
        await self._merge(f"b:{backend}", fields, lambda current: event_s > float(current.get("event_s", 0.0)))

    async def publish_throttle(self, backend: str, deployment: str, until_s: float) -> None:
        doc_id = "t:" + hashlib.sha256(f"{backend}\n{deployment}".encode()).hexdigest()
        fields = {"kind": "throttle", "backend": backend, "deployment": deployment, "until_s": until_s}
        await self._merge(doc_id, fields, lambda current: until_s > float(current.get("until_s", 0.0)))

    async def _merge(self, doc_id: str, fields: dict[str, Any], wins: Callable[[dict[str, Any]], bool]) -> None:
        from azure.core import MatchConditions
        from azure.core.exceptions import AzureError
        from azure.cosmos.exceptions import (
            CosmosAccessConditionFailedError,
            CosmosResourceExistsError,
            CosmosResourceNotFoundError,
        )

        container = await self._ready()
        try:
            for _ in range(_MERGE_TRIES):
                try:
                    current = await container.read_item(item=doc_id, partition_key=doc_id)
                except CosmosResourceNotFoundError:
                    try:
                        await container.create_item({"id": doc_id, "pk": doc_id, **fields})
                        return
                    except CosmosResourceExistsError:
                        continue  # another instance created it first: merge with theirs
                if not wins(current):
                    return
                current.update(fields)
                try:
                    await container.replace_item(
                        item=doc_id, body=current, etag=current["_etag"], match_condition=MatchConditions.IfNotModified
                    )
                    return
                except CosmosAccessConditionFailedError:
                    continue  # changed since we read it: read again
        except (AzureError, OSError) as exc:
            raise self._error(exc) from exc
        raise StorageError(f"Cosmos DB store {self._target.endpoint} (health): {doc_id} kept changing")

    async def read_all(self) -> SharedHealth:
        from azure.core.exceptions import AzureError

        container = await self._ready()
        try:
            items = [item async for item in container.query_items("SELECT * FROM c WHERE IS_DEFINED(c.kind)")]
        except (AzureError, OSError) as exc:
            raise self._error(exc) from exc
        shared = SharedHealth({}, {})
        for item in items:
            if item["kind"] == "breaker":
                shared.breakers[item["backend"]] = (float(item["open_until_s"]), float(item["event_s"]))
            elif item["kind"] == "throttle":
                shared.throttles[(item["backend"], item["deployment"])] = float(item["until_s"])
        return shared


def _short(exc: BaseException) -> str:
    return (str(exc).splitlines() or [type(exc).__name__])[0][:300]
