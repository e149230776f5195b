"""Sharing health between instances: publish this instance's new windows, adopt everyone else's.

Runs off the request path: a request only checks whether a sync is due and, if so, starts one in the
background. A store outage leaves each instance routing on its own view.
"""

from __future__ import annotations

import logging

from ..background import BackgroundTasks
from ..clock import Clock
from ..storage.ports import HealthStore, StorageError
from .health import HealthView

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
        if self._running or (now - self._last_s < self._interval_s and not self._view.changed):
            return
        self._running, self._last_s = True, now
        self._tasks.spawn(self.sync(), "health sync")

    async def sync(self) -> None:
        try:
            changed = list(self._view.changed)
            self._view.changed.clear()
            for backend in changed:
                await self._store.publish(backend, self._view.shared_state(backend))
            for backend, state in (await self._store.read_all()).items():
                self._view.merge(backend, state)
        except StorageError as exc:
            log.warning("health store unreachable, routing on this instance's view: %s", exc)
        finally:
            self._running = False
