"""Backend health: throttling per (backend, deployment), a circuit breaker per backend, probe outcomes apart.

Each instance decides from its own view (no store round trip on the request path). Azure's TPM/RPM limits are
per deployment, so a 429 keeps only that deployment on that backend away; connection errors and failure
statuses (5xx) count against the backend's breaker. A generation that is merely slow (a read timeout after the
status line, or the request's budget running out) counts against neither; nor does a read timeout before the
status line (a non-stream answer's comes only when generation ends) while live traffic to the backend has
succeeded within ``interval_s``: one client's long generations must not take a working backend from everyone.

Breaker states: closed → (``failures`` failures within ``interval_s``) → open for ``trip_s`` → half-open:
exactly one live request is let through; its success closes the breaker, its failure opens it again. Opens and
closes are events with a time: they are published to the shared health store, where the later event wins, and
merged back by a background sync, so a close seen by one instance is adopted by the others too.

Probes inform, live traffic decides: a probe's failure counts only while live traffic has had no success within
``interval_s``, a probe's 429 throttles nothing, a 404/405 means the probe is unsupported, and a probe never
takes the half-open slot.
"""

from __future__ import annotations

import collections
import enum
import math
from dataclasses import dataclass, field
from typing import Any

from ..clock import Clock
from ..config import Backend, BreakerSettings

_RECENT = 100  # outcomes and latencies kept for /status
_UNSUPPORTED_PROBE = frozenset({404, 405})


class HealthState(enum.StrEnum):
    """A backend's state as routing sees it (and /status shows it)."""

    HEALTHY = "healthy"
    THROTTLED = "throttled"  # the deployment asked us to wait (429)
    OPEN = "open"  # the breaker is open: no live request goes there
    HALF_OPEN = "half-open"  # one live request may test it
    UNKNOWN = "unknown"  # /status only: no request or probe has seen it yet


@dataclass(slots=True, frozen=True)
class BreakerEvent:
    """A breaker opened (until ``open_until_s``) or closed (``open_until_s`` 0) at ``event_s`` (unix s)."""

    open_until_s: float
    event_s: float


@dataclass(slots=True)
class BackendHealth:
    settings: BreakerSettings
    throttled_until_s: dict[str, float] = field(default_factory=dict)  # per upstream deployment
    open_until_s: float = 0.0
    was_opened: bool = False  # the breaker opened and has not closed since
    breaker_event_s: float = 0.0  # when it last opened or closed (the later event wins when shared)
    half_open_taken: bool = False  # the one half-open live request is in flight
    failures: collections.deque[float] = field(default_factory=collections.deque)
    last_live_success_s: float = -math.inf
    outcomes: collections.deque[bool] = field(default_factory=lambda: collections.deque(maxlen=_RECENT))
    latencies_ms: collections.deque[float] = field(default_factory=lambda: collections.deque(maxlen=_RECENT))
    last_status: int | None = None
    last_error: str | None = None
    last_seen_s: float | None = None
    probe_outcome: str | None = None  # ok, unsupported, throttled, HTTP 5xx, the transport error
    probe_counted: bool = False  # whether the last probe's failure counted against the breaker
    probe_seen_s: float | None = None


class HealthView:
    def __init__(self, clock: Clock, backends: list[Backend], default: BreakerSettings | None = None) -> None:
        self._clock = clock
        default = default or BreakerSettings()
        self._by_backend = {b.name: BackendHealth(b.breaker or default) for b in backends}
        # What changed since the last publish: breakers by backend, throttles by (backend, deployment).
        self.changed_breakers: set[str] = set()
        self.changed_throttles: set[tuple[str, str]] = set()

    def settings(self, backend: str) -> BreakerSettings:
        return self._by_backend[backend].settings

    # -- choosing

    def state(self, backend: str, deployment: str | None = None) -> HealthState:
        """``healthy``, ``throttled`` (``deployment`` on it), ``open`` or ``half-open`` (one test request allowed)."""
        h = self._by_backend[backend]
        if h.open_until_s > self._clock.now_s():
            return HealthState.OPEN
        if h.was_opened:
            return HealthState.HALF_OPEN
        if deployment is not None and self.throttled_for_s(backend, deployment) > 0:
            return HealthState.THROTTLED
        return HealthState.HEALTHY

    def acquire(self, backend: str, deployment: str) -> bool:
        """May a live request for ``deployment`` go to ``backend`` now? Takes the half-open slot if that is left."""
        h = self._by_backend[backend]
        state = self.state(backend, deployment)
        if state in (HealthState.OPEN, HealthState.THROTTLED):
            return False
        if state is HealthState.HALF_OPEN:
            if h.half_open_taken or self.throttled_for_s(backend, deployment) > 0:
                return False
            h.half_open_taken = True
        return True

    def last_resort(self, backend: str, deployment: str) -> bool:
        """May ``backend`` take a request that every eligible backend failed? Yes unless it asked us to wait
        (429): a breaker may still be open for a backend that has recovered, and trying it beats refusing."""
        return self.throttled_for_s(backend, deployment) <= 0

    def throttled_for_s(self, backend: str, deployment: str) -> float:
        until = self._by_backend[backend].throttled_until_s.get(deployment, 0.0)
        return max(0.0, until - self._clock.now_s())

    def open_until_s(self, backend: str) -> float:
        """When the breaker's open time ends (0 when closed): the soonest to end is the best last resort."""
        h = self._by_backend[backend]
        return h.open_until_s if h.was_opened else 0.0

    # -- learning from live traffic

    def observe(
        self,
        backend: str,
        deployment: str,
        *,
        status: int | None,
        error: str | None = None,
        latency_ms: float = 0.0,
        retry_after_s: float | None = None,
        counts: bool = True,
    ) -> None:
        """One live outcome: an HTTP ``status`` (with its Retry-After, if any) or a transport ``error``.

        ``counts=False``: a slow generation (read timeout after the status line, or out of budget), which frees
        the half-open slot but is neither a success nor a failure of the backend.
        """
        h = self._by_backend[backend]
        now = self._clock.now_s()
        h.last_seen_s, h.last_status = now, status
        if latency_ms:
            h.latencies_ms.append(latency_ms)
        if not counts:
            h.last_error, h.half_open_taken = error or f"HTTP {status}", False
            return
        failed = error is not None or (status is not None and self.is_failure(backend, status))
        h.outcomes.append(not failed and status != 429)
        if status == 429:
            seconds = retry_after_s if (h.settings.accept_retry_after and retry_after_s) else h.settings.throttle_s
            seconds = min(seconds, h.settings.max_retry_after_s)
            if now + seconds > h.throttled_until_s.get(deployment, 0.0):
                self._prune_throttles(h, now)
                h.throttled_until_s[deployment] = now + seconds
                self.changed_throttles.add((backend, deployment))
            h.last_error = f"HTTP 429 on {deployment} (throttled {seconds:g} s)"
            self._succeeded(backend, h, now)  # it answered: the backend is up, that deployment merely busy
            return
        if failed:
            h.last_error = error or f"HTTP {status}"
            if h.half_open_taken:
                self._open(backend, h, now)
                return
            self._count_failure(backend, h, now)
            return
        self._succeeded(backend, h, now)

    def is_failure(self, backend: str, status: int) -> bool:
        """A status that counts against the breaker: the failure statuses, and 401/403 to aigw's own credential."""
        return status in self._by_backend[backend].settings.failure_statuses or status in (401, 403)

    def live_success_within_interval(self, backend: str) -> bool:
        """Has live traffic to ``backend`` succeeded within the breaker's interval? Then a probe's failure, or one
        request's read timeout, is not taken as the backend failing."""
        h = self._by_backend[backend]
        return self._clock.now_s() - h.last_live_success_s <= h.settings.interval_s

    def release(self, backend: str) -> None:
        """The request that took the half-open slot ended without an outcome (client gone): free the slot."""
        self._by_backend[backend].half_open_taken = False

    # -- learning from probes

    def observe_probe(self, backend: str, *, status: int | None, error: str | None = None) -> None:
        """A probe's outcome: shown in /status; a failure counts only if live traffic has not succeeded lately."""
        h = self._by_backend[backend]
        now = self._clock.now_s()
        h.probe_seen_s, h.probe_counted = now, False
        if error is not None or (status is not None and status in h.settings.failure_statuses):
            h.probe_outcome = error or f"HTTP {status}"
            # Live traffic decides: a recent live success outweighs the probe; an open breaker is left to its
            # own half-open test (a probe never takes that slot, nor reopens it).
            if now - h.last_live_success_s > h.settings.interval_s and not h.was_opened:
                h.probe_counted = True
                self._count_failure(backend, h, now)
        elif status in _UNSUPPORTED_PROBE:
            h.probe_outcome = f"unsupported (HTTP {status})"
        elif status == 429:
            h.probe_outcome = "throttled"  # the probe's own request rate: throttles nothing
        else:
            h.probe_outcome = "ok" if status is not None and status < 400 else f"HTTP {status}"

    # -- transitions

    def _count_failure(self, backend: str, h: BackendHealth, now: float) -> None:
        h.failures.append(now)
        while h.failures and h.failures[0] <= now - h.settings.interval_s:
            h.failures.popleft()
        if len(h.failures) >= h.settings.failures:
            self._open(backend, h, now)

    def _open(self, backend: str, h: BackendHealth, now: float) -> None:
        h.open_until_s, h.breaker_event_s = now + h.settings.trip_s, now
        h.was_opened, h.half_open_taken = True, False
        h.failures.clear()
        self.changed_breakers.add(backend)

    def _succeeded(self, backend: str, h: BackendHealth, now: float) -> None:
        # Any live success closes the breaker: the half-open test request, or a last-resort try (see Forwarder).
        h.last_live_success_s = now
        h.half_open_taken = False
        if h.was_opened:
            h.was_opened, h.open_until_s, h.breaker_event_s = False, 0.0, now
            h.failures.clear()
            self.changed_breakers.add(backend)

    @staticmethod
    def _prune_throttles(h: BackendHealth, now: float) -> None:
        # Wildcard backends can see any deployment name: forget the windows that are over.
        for name in [d for d, until in h.throttled_until_s.items() if until <= now]:
            del h.throttled_until_s[name]

    # -- sharing

    def breaker_event(self, backend: str) -> BreakerEvent:
        h = self._by_backend[backend]
        return BreakerEvent(h.open_until_s if h.was_opened else 0.0, h.breaker_event_s)

    def throttled_until_s(self, backend: str, deployment: str) -> float:
        return self._by_backend[backend].throttled_until_s.get(deployment, 0.0)

    def merge_breaker(self, backend: str, event: BreakerEvent) -> None:
        """Adopt another instance's breaker event if it is later than this instance's last one (open or close)."""
        h = self._by_backend.get(backend)
        if h is None or event.event_s <= h.breaker_event_s:
            return
        h.breaker_event_s = event.event_s
        if event.open_until_s > self._clock.now_s():
            h.open_until_s, h.was_opened = event.open_until_s, True
        elif event.open_until_s > 0:
            return  # an open whose time is over (a store kept from an earlier run): no news either way
        else:
            h.open_until_s, h.was_opened, h.half_open_taken = 0.0, False, False
            h.failures.clear()

    def merge_throttle(self, backend: str, deployment: str, until_s: float) -> None:
        """Adopt another instance's throttle window for (backend, deployment): the later deadline wins."""
        h = self._by_backend.get(backend)
        if h is None or until_s <= max(h.throttled_until_s.get(deployment, 0.0), self._clock.now_s()):
            return
        h.throttled_until_s[deployment] = until_s

    # -- reporting

    def snapshot(self, backend: str) -> dict[str, Any]:
        h = self._by_backend[backend]
        now = self._clock.now_s()
        latencies = sorted(h.latencies_ms)
        throttled = {d: until for d, until in sorted(h.throttled_until_s.items()) if until > now}
        return {
            "state": self.state(backend) if h.last_seen_s is not None or h.was_opened else HealthState.UNKNOWN,
            "throttled_deployments_until_unix_s": throttled,
            "open_until_unix_s": h.open_until_s if h.open_until_s > now else None,
            "recent_requests": len(h.outcomes),
            "recent_error_rate": round(1 - sum(h.outcomes) / len(h.outcomes), 4) if h.outcomes else None,
            "recent_latency_p50_ms": round(latencies[len(latencies) // 2], 1) if latencies else None,
            "last_status": h.last_status,
            "last_error": h.last_error,
            "last_seen_unix_s": h.last_seen_s,
            "probe": {
                "outcome": h.probe_outcome,
                "counted_as_failure": h.probe_counted,
                "seen_unix_s": h.probe_seen_s,
            },
        }
