"""This instance's view of backend health, fed passively by real traffic.

The routing issue adds active probes (the timer trigger) and a shared store behind this same view.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from ..clock import Clock


@dataclass(slots=True)
class BackendHealth:
    state: str = "unknown"  # unknown | healthy | failing
    last_status: int | None = None
    last_error: str | None = None
    last_seen_s: float | None = None
    consecutive_failures: int = 0
    successes: int = 0
    failures: int = 0


class HealthView:
    def __init__(self, clock: Clock, backend_names: list[str]) -> None:
        self._clock = clock
        self._by_backend = {name: BackendHealth() for name in backend_names}

    def observe(self, backend: str, *, status: int | None, error: str | None = None) -> None:
        """Record one response (``status``) or transport failure (``error``) from ``backend``."""
        health = self._by_backend[backend]
        health.last_seen_s = self._clock.now_s()
        health.last_status = status
        failed = error is not None or (status is not None and status >= 500)
        if failed:
            health.failures += 1
            health.consecutive_failures += 1
            health.last_error = error or f"HTTP {status}"
            health.state = "failing"
        else:
            health.successes += 1
            health.consecutive_failures = 0
            health.state = "healthy"

    def snapshot(self, backend: str) -> dict[str, Any]:
        h = self._by_backend[backend]
        return {
            "state": h.state,
            "source": "passive (this instance's traffic)",
            "last_status": h.last_status,
            "last_error": h.last_error,
            "last_seen_unix_s": h.last_seen_s,
            "consecutive_failures": h.consecutive_failures,
            "successes": h.successes,
            "failures": h.failures,
        }
