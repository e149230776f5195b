"""In-process stores for unit tests (``memory://``): not shared between processes."""

from __future__ import annotations


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
