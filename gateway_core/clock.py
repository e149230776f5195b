"""One injectable clock, so tests move time instead of sleeping."""

from __future__ import annotations

import time
from typing import Protocol


class Clock(Protocol):
    def now_s(self) -> float:
        """Wall-clock seconds since the epoch (windows, TTLs, Retry-After dates)."""
        ...

    def monotonic_s(self) -> float:
        """Monotonic seconds (durations, breakers)."""
        ...


class SystemClock:
    def now_s(self) -> float:
        return time.time()

    def monotonic_s(self) -> float:
        return time.monotonic()


class ManualClock:
    """A clock that moves only when told to."""

    def __init__(self, start_s: float = 1_700_000_000.0) -> None:
        self._now = start_s
        self._mono = 0.0

    def now_s(self) -> float:
        return self._now

    def monotonic_s(self) -> float:
        return self._mono

    def advance(self, seconds: float) -> None:
        self._now += seconds
        self._mono += seconds
