"""Sharing health between instances: publish this instance's breaker events and throttle windows, adopt
everyone else's (a breaker's later event wins, open or close; a throttle's later deadline wins).

Runs off the request path: a request only checks whether a sync is due and, if so, starts one in the
background. A store outage leaves each instance routing on its own view.
"""

from __future__ import annotations

import logging

from ..background import BackgroundTasks
from ..clock import Clock
from ..storage.ports import HealthStore, StorageError
from .health import BreakerEvent, HealthView

log = logging.getLogger("aigw")


class HealthSync:
    def __init__(self, view: HealthView, store: HealthStore, clock: Clock, interval_s: float, tasks: BackgroundTasks):
        self._view = view
        self._store = store
        self._clock = clock
        self._interval_s = interval_s
        self._tasks = tasks
        self._last_s = float("-inf")
        self._running = False

    def maybe_sync(self) -> None:
        """Start a sync in the background if one is due and none is running."""
        now = self._clock.monotonic_s()
        changed = self._view.changed_breakers or self._view.changed_throttles
        if self._running or (now - self._last_s < self._interval_s and not changed):
            return
        self._running, self._last_s = True, now
        self._tasks.spawn(self.sync(), "health sync")

    async def sync(self) -> None:
        view = self._view
        breakers, throttles = list(view.changed_breakers), list(view.changed_throttles)
        view.changed_breakers.clear()
        view.changed_throttles.clear()
        try:
            for backend in breakers:
                event = view.breaker_event(backend)
                await self._store.publish_breaker(backend, event.open_until_s, event.event_s)
            for backend, deployment in throttles:
                await self._store.publish_throttle(backend, deployment, view.throttled_until_s(backend, deployment))
            shared = await self._store.read_all()
            for backend, (open_until_s, event_s) in shared.breakers.items():
                view.merge_breaker(backend, BreakerEvent(open_until_s, event_s))
            for (backend, deployment), until_s in shared.throttles.items():
                view.merge_throttle(backend, deployment, until_s)
        except StorageError as exc:
            # Publish again next time: the store may answer then.
            view.changed_breakers.update(breakers)
            view.changed_throttles.update(throttles)
            log.warning("health store unreachable, routing on this instance's view: %s", exc)
        finally:
            self._running = False
