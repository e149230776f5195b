"""The storage ports. Adapters turn their SDK's exceptions into ``StorageError``."""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import NamedTuple, Protocol, runtime_checkable

from ..usage.record import QueueMessage, RecordQuery, SummaryKey, SummaryQuery, SummaryTotals, UsageBatch, UsageRecord


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


# A cache lookup and, on a miss only, counter adds, in one round trip: where one thread serves the cache and the
# counters stores (both SQLite in one process; see sqlite_cache.lookup_then_add). Returns the entry found (no
# adds made) or None and the adds' new totals. On StorageError nothing was added.
LookupThenAdd = Callable[
    [str, str, float, Sequence[CounterAdd]], Awaitable[tuple["CacheEntry | None", list[int] | None]]
]


@dataclass(slots=True)
class AdmissionAhead:
    """The counter adds the limits policy will make to admit a request, offered to the cache policy before its
    lookup (``RequestContext.admission``): on a miss the cache makes them in its lookup's round trip and leaves
    their ``totals`` here, and the limits policy reads them instead of making its own trip. A request then
    answered without reaching the limits policy (a waiter served the leader's answer) calls ``release``."""

    adds: list[CounterAdd]
    release: Callable[[], None]
    totals: list[int] | None = None


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


class UsageStore(Protocol):
    """Usage records and the cost summaries built from them (``stores.usage``: SQLite, Table Storage).

    Records are written in batches; each batch's records are summed into the summary rows exactly once, however
    often its queue message is delivered, in whatever order, concurrently or not: ``absorb`` is atomic per
    (batch, day). A batch written but never summarised (its message was lost) stays pending and is found again.
    """

    async def start(self) -> None:
        """Connect; create tables/queues only if the adapter was told to (``create_if_missing``)."""
        ...

    async def write_batch(self, batch: UsageBatch) -> None:
        """Store every record of ``batch`` and mark the batch pending. Idempotent: writing the same batch again
        (a retry after a failure or a timeout) leaves one copy of each record."""
        ...

    async def batch_records(self, batch_id: str) -> tuple[UsageRecord, ...] | None:
        """The records of a written batch, or None if no batch of that id was written."""
        ...

    async def absorb(self, batch_id: str, day: str, rows: dict[SummaryKey, SummaryTotals]) -> bool:
        """Add ``rows`` (all of ``day``) to the summaries, atomically with noting that ``batch_id`` was absorbed
        into ``day``. Returns False, changing nothing, if it already was. Concurrent absorbs never lose an update."""
        ...

    async def finish_batch(self, batch_id: str) -> None:
        """The batch is fully summarised: no longer pending."""
        ...

    async def pending_batches(self, written_before_s: float) -> list[str]:
        """Batches written before ``written_before_s`` and not yet finished (their message may have been lost)."""
        ...

    async def records(self, query: RecordQuery) -> list[UsageRecord]:
        """Records matching ``query``, newest first, at most ``query.limit``."""
        ...

    async def summaries(self, query: SummaryQuery) -> dict[SummaryKey, SummaryTotals]:
        """Summary rows matching ``query``."""
        ...

    async def close(self) -> None: ...


@runtime_checkable
class SummarisingUsageStore(UsageStore, Protocol):
    """A usage store that holds the records and the summaries in one database (SQLite): it can store a batch and
    absorb it in one transaction, with no queue message and no read-back."""

    async def write_summarised(self, batch: UsageBatch) -> None:
        """``write_batch``, ``absorb`` of each day of ``batch`` and ``finish_batch``, in one transaction: all of
        it or none. Idempotent like ``write_batch``; a day already absorbed (a retry, or a batch the queue path
        absorbed in part before a crash) is not added again."""
        ...


class UsageQueue(Protocol):
    """The queue that tells the summariser a batch was written (at least once). Messages are batch ids; the
    Storage queue adapter base64-encodes them, as the Functions queue trigger expects."""

    async def start(self) -> None: ...

    async def send(self, batch_id: str) -> None: ...

    async def receive(self, max_messages: int, visibility_timeout_s: float) -> list[QueueMessage]:
        """Up to ``max_messages`` messages, each invisible to others for ``visibility_timeout_s``."""
        ...

    async def delete(self, message: QueueMessage) -> None: ...

    async def poison(self, message: QueueMessage, reason: str) -> None:
        """Move ``message`` to the poison queue with ``reason``, and delete it here."""
        ...

    async def close(self) -> None: ...
