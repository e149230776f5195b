"""In-process stores for unit tests (``memory://``): not shared between processes."""

from __future__ import annotations

import itertools
import time
from collections.abc import Iterable
from dataclasses import dataclass

from ..cache.vectors import cosine
from ..usage.record import QueueMessage, RecordQuery, SummaryKey, SummaryQuery, SummaryTotals, UsageBatch, UsageRecord
from .ports import CacheEntry, SharedHealth


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


class MemoryCache:
    def __init__(self) -> None:
        self._entries: dict[tuple[str, str], CacheEntry] = {}

    async def start(self) -> None:
        return None

    async def get(self, bucket: str, key: str, now_s: float) -> CacheEntry | None:
        entry = self._entries.get((bucket, key))
        return entry if entry is not None and entry.expires_s > now_s else None

    async def put(self, entry: CacheEntry) -> None:
        self._entries[(entry.bucket, entry.key)] = entry

    async def nearest(self, bucket: str, vector: tuple[float, ...], now_s: float) -> tuple[CacheEntry, float] | None:
        candidates = [
            e for (b, _), e in self._entries.items() if b == bucket and e.vector is not None and e.expires_s > now_s
        ]
        return _best_match(candidates, vector)

    async def close(self) -> None:
        return None


class MemoryHealth:
    def __init__(self) -> None:
        self._breakers: dict[str, tuple[float, float]] = {}
        self._throttles: dict[tuple[str, str], float] = {}

    async def start(self) -> None:
        return None

    async def publish_breaker(self, backend: str, open_until_s: float, event_s: float) -> None:
        current = self._breakers.get(backend)
        if current is None or event_s > current[1]:
            self._breakers[backend] = (open_until_s, event_s)

    async def publish_throttle(self, backend: str, deployment: str, until_s: float) -> None:
        key = (backend, deployment)
        self._throttles[key] = max(self._throttles.get(key, 0.0), until_s)

    async def read_all(self) -> SharedHealth:
        return SharedHealth(dict(self._breakers), dict(self._throttles))

    async def close(self) -> None:
        return None


class MemoryUsage:
    """Usage records and summaries in this process. Every method runs without awaiting, so each is atomic."""

    def __init__(self) -> None:
        self._records: dict[tuple[str, str, str], UsageRecord] = {}  # (day, tenant, record_id)
        self._batches: dict[str, tuple[float, tuple[tuple[str, str, str], ...]]] = {}  # id -> (written_s, keys)
        self._finished: set[str] = set()
        self._absorbed: set[tuple[str, str]] = set()  # (batch_id, day)
        self._summaries: dict[SummaryKey, SummaryTotals] = {}

    async def start(self) -> None:
        return None

    async def write_batch(self, batch: UsageBatch) -> None:
        keys = tuple((r.day, r.tenant, r.record_id) for r in batch.records)
        for key, record in zip(keys, batch.records, strict=True):
            self._records.setdefault(key, record)
        self._batches.setdefault(batch.batch_id, (time.time(), keys))

    async def batch_records(self, batch_id: str) -> tuple[UsageRecord, ...] | None:
        batch = self._batches.get(batch_id)
        return None if batch is None else tuple(self._records[key] for key in batch[1])

    async def absorb(self, batch_id: str, day: str, rows: dict[SummaryKey, SummaryTotals]) -> bool:
        if (batch_id, day) in self._absorbed:
            return False
        self._absorbed.add((batch_id, day))
        for key, totals in rows.items():
            self._summaries.setdefault(key, SummaryTotals()).merge(totals)
        return True

    async def finish_batch(self, batch_id: str) -> None:
        self._finished.add(batch_id)

    async def pending_batches(self, written_before_s: float) -> list[str]:
        return [
            b for b, (written_s, _) in self._batches.items() if written_s < written_before_s and b not in self._finished
        ]

    async def records(self, query: RecordQuery) -> list[UsageRecord]:
        found = [
            r
            for (day, tenant, _), r in self._records.items()
            if query.from_day <= day <= query.to_day
            and (query.tenant is None or tenant == query.tenant)
            and (query.user is None or r.user == query.user)
            and (query.request_id is None or r.request_id == query.request_id)
        ]
        found.sort(key=lambda r: (r.time_s, r.record_id), reverse=True)
        return found[: query.limit]

    async def summaries(self, query: SummaryQuery) -> dict[SummaryKey, SummaryTotals]:
        return {
            key: _copy(totals)
            for key, totals in self._summaries.items()
            if query.from_day <= key.day <= query.to_day
            and (query.tenant is None or key.tenant == query.tenant)
            and (query.user is None or key.user == query.user)
        }

    async def close(self) -> None:
        return None


def _copy(totals: SummaryTotals) -> SummaryTotals:
    copy = SummaryTotals()
    copy.merge(totals)
    return copy


@dataclass(slots=True)
class _Message:
    body: str
    visible_s: float = 0.0  # monotonic time from which it may be received again
    dequeue_count: int = 0
    receipt: int = 0  # changes at every receive: a stale receipt deletes nothing (as a Storage queue's pop receipt)


class MemoryQueue:
    """The in-process usage queue (``aigw serve`` with SQLite): at-least-once with a visibility timeout, as a
    Storage queue, for one process. Messages die with the process; the summariser's sweep finds their batches.

    At most ``max_messages`` are held: where nothing consumes it (the Functions app with SQLite, summarised by
    its timer's sweep), the oldest message is dropped rather than memory growing; its batch stays pending."""

    def __init__(self, max_messages: int = 10_000) -> None:
        self._max_messages = max_messages
        self.dropped = 0
        self._messages: dict[int, _Message] = {}
        self._ids = itertools.count(1)
        self._receipts = itertools.count(1)
        self.poisoned: list[tuple[str, str]] = []  # (body, reason), for tests and logs

    async def start(self) -> None:
        return None

    async def send(self, batch_id: str) -> None:
        if len(self._messages) >= self._max_messages:
            del self._messages[next(iter(self._messages))]
            self.dropped += 1
        self._messages[next(self._ids)] = _Message(batch_id)

    async def receive(self, max_messages: int, visibility_timeout_s: float) -> list[QueueMessage]:
        now_s = time.monotonic()
        taken: list[QueueMessage] = []
        for message_id, message in self._messages.items():
            if len(taken) >= max_messages:
                break
            if message.visible_s > now_s:
                continue
            message.visible_s = now_s + visibility_timeout_s
            message.dequeue_count += 1
            message.receipt = next(self._receipts)
            taken.append(QueueMessage(message.body, message.dequeue_count, (message_id, message.receipt)))
        return taken

    async def delete(self, message: QueueMessage) -> None:
        message_id, receipt = _receipt(message)
        held = self._messages.get(message_id)
        if held is not None and held.receipt == receipt:
            del self._messages[message_id]

    async def poison(self, message: QueueMessage, reason: str) -> None:
        self.poisoned.append((message.body, reason))
        await self.delete(message)

    def __len__(self) -> int:
        return len(self._messages)

    async def close(self) -> None:
        return None


def _receipt(message: QueueMessage) -> tuple[int, int]:
    receipt = message.receipt
    if not (isinstance(receipt, tuple) and len(receipt) == 2):
        raise ValueError("not a message of this queue")
    return int(receipt[0]), int(receipt[1])


def _best_match(candidates: Iterable[CacheEntry], vector: tuple[float, ...]) -> tuple[CacheEntry, float] | None:
    """The candidate nearest to ``vector``, by brute force: this store holds a test's few entries."""
    best: tuple[CacheEntry, float] | None = None
    for entry in candidates:
        if entry.vector is None:
            continue
        score = cosine(entry.vector, vector)
        if best is None or score > best[1]:
            best = (entry, score)
    return best
