"""In-process stores for unit tests (``memory://``): not shared between processes."""

from __future__ import annotations

from collections.abc import Iterable, Sequence

from ..cache.vectors import cosine
from .ports import CacheEntry, CounterAdd, SharedHealth


class MemoryCounters:
    def __init__(self) -> None:
        self._values: dict[tuple[str, int], int] = {}
        self.round_trips = 0  # what a real store would have cost, for tests that count them

    async def start(self) -> None:
        return None

    async def add(self, key: str, window: int, amount: int, ttl_s: int) -> int:
        self.round_trips += 1
        value = self._values.get((key, window), 0) + amount
        self._values[(key, window)] = value
        return value

    async def add_many(self, adds: Sequence[CounterAdd]) -> list[int]:
        self.round_trips += 1
        totals = []
        for add in adds:
            total = self._values[(add.key, add.window)] = self._values.get((add.key, add.window), 0) + add.amount
            totals.append(total)
        return totals

    async def get(self, key: str, window: int) -> int:
        self.round_trips += 1
        return self._values.get((key, window), 0)

    async def close(self) -> None:
        return None


class MemoryCache:
    def __init__(self) -> None:
        self._entries: dict[tuple[str, str], CacheEntry] = {}

    async def start(self) -> None:
        return None

    async def get(self, bucket: str, key: str, now_s: float) -> CacheEntry | None:
        entry = self._entries.get((bucket, key))
        return entry if entry is not None and entry.expires_s > now_s else None

    async def put(self, entry: CacheEntry) -> None:
        self._entries[(entry.bucket, entry.key)] = entry

    async def nearest(self, bucket: str, vector: tuple[float, ...], now_s: float) -> tuple[CacheEntry, float] | None:
        candidates = [
            e for (b, _), e in self._entries.items() if b == bucket and e.vector is not None and e.expires_s > now_s
        ]
        return _best_match(candidates, vector)

    async def close(self) -> None:
        return None


class MemoryHealth:
    def __init__(self) -> None:
        self._breakers: dict[str, tuple[float, float]] = {}
        self._throttles: dict[tuple[str, str], float] = {}

    async def start(self) -> None:
        return None

    async def publish_breaker(self, backend: str, open_until_s: float, event_s: float) -> None:
        current = self._breakers.get(backend)
        if current is None or event_s > current[1]:
            self._breakers[backend] = (open_until_s, event_s)

    async def publish_throttle(self, backend: str, deployment: str, until_s: float) -> None:
        key = (backend, deployment)
        self._throttles[key] = max(self._throttles.get(key, 0.0), until_s)

    async def read_all(self) -> SharedHealth:
        return SharedHealth(dict(self._breakers), dict(self._throttles))

    async def close(self) -> None:
        return None


def _best_match(candidates: Iterable[CacheEntry], vector: tuple[float, ...]) -> tuple[CacheEntry, float] | None:
    """The candidate nearest to ``vector``, by brute force: this store holds a test's few entries."""
    best: tuple[CacheEntry, float] | None = None
    for entry in candidates:
        if entry.vector is None:
            continue
        score = cosine(entry.vector, vector)
        if best is None or score > best[1]:
            best = (entry, score)
    return best
