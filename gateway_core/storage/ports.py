"""The storage ports. Adapters turn their SDK's exceptions into ``StorageError``."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import NamedTuple, Protocol


class StorageError(Exception):
    """The store could not be reached or refused the operation; the message says which store and why."""


class CounterAdd(NamedTuple):
    """One ``CounterStore.add``, for ``add_many``."""

    key: str
    window: int
    amount: int
    ttl_s: int


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

    async def add_many(self, adds: Sequence[CounterAdd]) -> list[int]:
        """``add`` each item, in one round trip where the store allows it; the new totals, in order.

        Each item is atomic as ``add`` is. On ``StorageError`` none is applied: one transaction where the store
        has one across keys (SQLite); otherwise (Cosmos DB) the items that were applied are taken back.
        """
        ...

    async def get(self, key: str, window: int) -> int:
        """The counter's total, 0 if it does not exist."""
        ...

    async def close(self) -> None: ...


@dataclass(slots=True, frozen=True)
class CacheEntry:
    """A cached answer: the backend's JSON body and what it saved, plus its embedding for semantic lookups."""

    key: str  # SHA-256 hex of the canonical request (exact) or of the prompt within its bucket (semantic)
    bucket: str  # deployment + scope (+ vary-by values): exact and semantic entries never cross buckets
    body: bytes
    created_s: float
    expires_s: float
    prompt_tokens: int = 0
    completion_tokens: int = 0
    vector: tuple[float, ...] | None = None  # semantic entries only (unit length)


class CacheStore(Protocol):
    """Cached answers with expiry; semantic entries carry a vector searched within their bucket."""

    async def start(self) -> None:
        """Connect and create what is missing. Raises ``StorageError``."""
        ...

    async def get(self, bucket: str, key: str, now_s: float) -> CacheEntry | None:
        """The entry, or None if absent or expired at ``now_s``."""
        ...

    async def put(self, entry: CacheEntry) -> None:
        """Store (or replace) ``entry``; it is gone after ``entry.expires_s``."""
        ...

    async def nearest(self, bucket: str, vector: tuple[float, ...], now_s: float) -> tuple[CacheEntry, float] | None:
        """The unexpired semantic entry of ``bucket`` with the highest cosine similarity, and that similarity."""
        ...

    async def close(self) -> None: ...


@dataclass(slots=True, frozen=True)
class SharedHealth:
    """What every instance shares: each backend's last breaker event, each (backend, deployment)'s throttle.

    ``breakers`` maps a backend to ``(open_until_s, event_s)``: opened until then, or closed (0) at ``event_s``.
    ``throttles`` maps ``(backend, deployment)`` to the unix time its throttle window ends.
    """

    breakers: dict[str, tuple[float, float]]
    throttles: dict[tuple[str, str], float]


class HealthStore(Protocol):
    """Backend health shared by every instance: breaker events per backend, throttles per deployment."""

    async def start(self) -> None:
        """Connect and create what is missing. Raises ``StorageError``."""
        ...

    async def publish_breaker(self, backend: str, open_until_s: float, event_s: float) -> None:
        """Record that the breaker opened (until ``open_until_s``) or closed (0) at ``event_s``.

        The event with the later ``event_s`` wins, whichever arrives last; concurrent publishes never leave an
        earlier event in place of a later one.
        """
        ...

    async def publish_throttle(self, backend: str, deployment: str, until_s: float) -> None:
        """Record that ``deployment`` on ``backend`` is throttled until ``until_s``; the later deadline wins."""
        ...

    async def read_all(self) -> SharedHealth:
        """Every backend's last breaker event and every throttle window."""
        ...

    async def close(self) -> None: ...
