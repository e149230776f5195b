"""In-process stores for unit tests (``memory://``): not shared between processes."""

from __future__ import annotations

from .ports import CacheEntry
from .vectors import best_match


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
        return best_match(candidates, vector)

    async def close(self) -> None:
        return None


class MemoryHealth:
    def __init__(self) -> None:
        self._states: dict[str, dict[str, float]] = {}

    async def start(self) -> None:
        return None

    async def publish(self, backend: str, state: dict[str, float]) -> None:
        current = self._states.setdefault(backend, {})
        for name, value in state.items():
            current[name] = max(current.get(name, 0.0), value)

    async def read_all(self) -> dict[str, dict[str, float]]:
        return {name: dict(state) for name, state in self._states.items()}

    async def close(self) -> None:
        return None
