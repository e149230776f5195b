"""Backend health: throttling windows from 429s, a circuit breaker per backend, recent latency and errors.

Each instance decides from its own view (no store round trip on the request path). Transitions that every
instance should respect (throttled until, open until) are published to the shared health store and merged
back in by a background sync, so one instance's 429 keeps the others away too.

Breaker states: closed → (``failures`` failures within ``interval_s``) → open for ``trip_s`` → half-open:
exactly one request is let through; its success closes the breaker, its failure opens it again.
"""

from __future__ import annotations

import collections
from dataclasses import dataclass, field
from typing import Any

from ..clock import Clock
from ..config import Backend, BreakerSettings

_RECENT = 100  # outcomes and latencies kept for /status


@dataclass(slots=True)
class BackendHealth:
    settings: BreakerSettings
    throttled_until_s: float = 0.0
    open_until_s: float = 0.0
    half_open_probe: bool = False  # the one half-open request is in flight
    failures: collections.deque[float] = field(default_factory=collections.deque)
    outcomes: collections.deque[bool] = field(default_factory=lambda: collections.deque(maxlen=_RECENT))
    latencies_ms: collections.deque[float] = field(default_factory=lambda: collections.deque(maxlen=_RECENT))
    last_status: int | None = None
    last_error: str | None = None
    last_seen_s: float | None = None
    was_opened: bool = False  # the breaker opened at least once and has not closed since


class HealthView:
    def __init__(self, clock: Clock, backends: list[Backend], default: BreakerSettings | None = None) -> None:
        self._clock = clock
        default = default or BreakerSettings()
        self._by_backend = {b.name: BackendHealth(b.breaker or default) for b in backends}
        self.changed: set[str] = set()  # backends whose shared state changed since the last publish

    def settings(self, backend: str) -> BreakerSettings:
        return self._by_backend[backend].settings

    # -- choosing

    def state(self, backend: str) -> str:
        """``healthy``, ``throttled``, ``open`` or ``half-open`` (open time over, test request allowed)."""
        h = self._by_backend[backend]
        now = self._clock.now_s()
        if h.open_until_s > now:
            return "open"
        if h.was_opened:
            return "half-open"
        if h.throttled_until_s > now:
            return "throttled"
        return "healthy"

    def acquire(self, backend: str) -> bool:
        """May a request go to ``backend`` now? Takes the single half-open slot when that is what is left."""
        h = self._by_backend[backend]
        state = self.state(backend)
        if state in ("open", "throttled"):
            return False
        if state == "half-open":
            if h.half_open_probe or h.throttled_until_s > self._clock.now_s():
                return False
            h.half_open_probe = True
        return True

    def last_resort(self, backend: str) -> bool:
        """May ``backend`` take a request when no backend is eligible? Yes unless it asked us to wait (429):
        a breaker may still be open for a backend that has recovered, and trying it beats refusing."""
        return self.throttled_for_s(backend) <= 0

    def throttled_for_s(self, backend: str) -> float:
        return max(0.0, self._by_backend[backend].throttled_until_s - self._clock.now_s())

    # -- learning

    def observe(
        self,
        backend: str,
        *,
        status: int | None,
        error: str | None = None,
        latency_ms: float = 0.0,
        retry_after_s: float | None = None,
    ) -> None:
        """One outcome: an HTTP ``status`` (with the backend's Retry-After, if any) or a transport ``error``."""
        h = self._by_backend[backend]
        now = self._clock.now_s()
        h.last_seen_s, h.last_status = now, status
        if latency_ms:
            h.latencies_ms.append(latency_ms)
        failed = error is not None or (status is not None and status in h.settings.failure_statuses)
        h.outcomes.append(not failed and status != 429)
        if status == 429:
            seconds = retry_after_s if (h.settings.accept_retry_after and retry_after_s) else h.settings.throttle_s
            until = now + min(seconds, h.settings.max_retry_after_s)
            if until > h.throttled_until_s:
                h.throttled_until_s = until
                self.changed.add(backend)
            h.last_error = f"HTTP 429 (throttled {min(seconds, h.settings.max_retry_after_s):g} s)"
            self._succeeded(h)  # it answered: the backend is up, merely busy
            return
        if failed:
            h.last_error = error or f"HTTP {status}"
            if h.half_open_probe:
                self._open(backend, h, now)
                return
            h.failures.append(now)
            while h.failures and h.failures[0] <= now - h.settings.interval_s:
                h.failures.popleft()
            if len(h.failures) >= h.settings.failures:
                self._open(backend, h, now)
            return
        self._succeeded(h)

    def release(self, backend: str) -> None:
        """The request that took the half-open slot ended without an outcome (client gone): free the slot."""
        self._by_backend[backend].half_open_probe = False

    def _open(self, backend: str, h: BackendHealth, now: float) -> None:
        h.open_until_s = now + h.settings.trip_s
        h.was_opened, h.half_open_probe = True, False
        h.failures.clear()
        self.changed.add(backend)

    def _succeeded(self, h: BackendHealth) -> None:
        # Any success closes the breaker: the half-open test request, or a last-resort try (see Forwarder).
        if h.was_opened:
            h.was_opened, h.open_until_s = False, 0.0
        h.half_open_probe = False

    # -- sharing

    def shared_state(self, backend: str) -> dict[str, float]:
        h = self._by_backend[backend]
        return {"throttled_until_s": h.throttled_until_s, "open_until_s": h.open_until_s if h.was_opened else 0.0}

    def merge(self, backend: str, shared: dict[str, Any]) -> None:
        """Adopt another instance's throttle and breaker windows (the later deadline wins)."""
        h = self._by_backend.get(backend)
        if h is None:
            return
        h.throttled_until_s = max(h.throttled_until_s, float(shared.get("throttled_until_s", 0.0)))
        open_until = float(shared.get("open_until_s", 0.0))
        if open_until > h.open_until_s and open_until > self._clock.now_s():
            h.open_until_s, h.was_opened = open_until, True

    # -- reporting

    def snapshot(self, backend: str) -> dict[str, Any]:
        h = self._by_backend[backend]
        now = self._clock.now_s()
        latencies = sorted(h.latencies_ms)
        return {
            "state": self.state(backend) if h.last_seen_s is not None or h.was_opened else "unknown",
            "throttled_until_unix_s": h.throttled_until_s if h.throttled_until_s > now else None,
            "open_until_unix_s": h.open_until_s if h.open_until_s > now else None,
            "recent_requests": len(h.outcomes),
            "recent_error_rate": round(1 - sum(h.outcomes) / len(h.outcomes), 4) if h.outcomes else None,
            "recent_latency_p50_ms": round(latencies[len(latencies) // 2], 1) if latencies else None,
            "last_status": h.last_status,
            "last_error": h.last_error,
            "last_seen_unix_s": h.last_seen_s,
        }
