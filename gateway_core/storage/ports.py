"""The storage ports. Adapters turn their SDK's exceptions into ``StorageError``."""

from __future__ import annotations

from typing import Protocol


class StorageError(Exception):
    """The store could not be reached or refused the operation; the message says which store and why."""


class CounterStore(Protocol):
    """Integer counters per (key, window), shared by every gateway instance that uses the same store.

    ``key`` names what is counted (rule and counter key, e.g. ``tpm:per-user:alice``); ``window`` is the
    window's start in unix seconds. Expired windows are never read by callers (they compute the window from
    the clock), so an adapter may keep them for ``ttl_s`` or longer.
    """

    async def start(self) -> None:
        """Connect and create what is missing (tables, containers). Raises ``StorageError``."""
        ...

    async def add(self, key: str, window: int, amount: int, ttl_s: int) -> int:
        """Atomically add ``amount`` (may be negative) to the counter and return its new total.

        A missing counter starts at 0. Concurrent adds from many processes never lose an update.
        """
        ...

    async def get(self, key: str, window: int) -> int:
        """The counter's total, 0 if it does not exist."""
        ...

    async def close(self) -> None: ...
