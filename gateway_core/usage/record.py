"""The usage record (one per request) and the summary rows built from them (by the queue consumer; on SQLite, by
the writer in the transaction that stores each batch).

Money is integer micro-dollars (1 USD = 1,000,000), never float: sums stay exact. ``None`` means "unknown"
(a model without a price), which is never the same as 0.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass, field
from datetime import UTC, datetime

MICRO_USD = 1_000_000
UNAUTHENTICATED = "(unauthenticated)"  # the tenant and user of refusals before a principal was known


_DAY_S = 86400.0
_NEAR_MIDNIGHT_S = 0.001  # datetime rounds to the microsecond: that close to midnight, it decides the day


def utc_day(time_s: float) -> str:
    """``YYYY-MM-DD`` of ``time_s`` in UTC: the day a record and its summaries belong to."""
    # Several calls per record (stored, summarised): the day's number, then its name remembered (~10x faster).
    days, within_s = divmod(time_s, _DAY_S)
    if _NEAR_MIDNIGHT_S < within_s < _DAY_S - _NEAR_MIDNIGHT_S:
        return _day_name(int(days))
    return datetime.fromtimestamp(time_s, UTC).strftime("%Y-%m-%d")


@functools.lru_cache(maxsize=64)
def _day_name(days: int) -> str:
    return datetime.fromtimestamp(days * _DAY_S, UTC).strftime("%Y-%m-%d")


# Not frozen: a frozen dataclass's __init__ sets its 33 fields through object.__setattr__, ~8 us per record on the
# event loop against ~1.5 us; nothing changes a record once built (nor hashes one).
@dataclass(slots=True)
class UsageRecord:
    """What one request through the gateway did and cost. No prompt or completion text, ever.

    ``record_id`` is unique per record (the gateway makes it; ``request_id`` may come from the client and
    repeat). Writing the same record twice leaves one copy: stores key records by ``(day, tenant, record_id)``.
    Refusals before authentication are aggregated: one record per source address, refusal code and minute,
    with ``count`` requests in it (``tenant`` and ``user`` are ``UNAUTHENTICATED``).
    """

    record_id: str
    time_s: float  # when the request arrived, unix seconds
    request_id: str
    tenant: str
    user: str
    key_id: str | None
    method: str
    path: str  # the path without its query (never a key: keys travel in headers)
    status: int
    deployment: str | None = None
    model: str | None = None
    backend: str | None = None
    region: str | None = None
    stream: bool = False
    prompt_tokens: int = 0
    completion_tokens: int = 0
    cached_prompt_tokens: int = 0  # part of prompt_tokens, billed at the cached-input price
    reasoning_tokens: int = 0  # part of completion_tokens
    token_source: str = ""  # UsageSource: backend | counted | cache | "" (no answer)
    cost_micro_usd: int | None = None  # None: the model has no price (never recorded as 0)
    cache: str = ""  # CacheStatus: HIT, SEMANTIC-HIT, MISS, BYPASS, "" (off)
    saved_tokens: int = 0  # a cache hit: the tokens the backend did not have to process
    saved_micro_usd: int | None = None
    attempts: int = 0
    ttfb_ms: float | None = None  # until the response's first byte left the gateway
    latency_ms: float = 0.0  # until its last byte (a stream: when it ended)
    limit_rule: str | None = None  # the limit rule that refused the request
    error_code: str | None = None  # the error's "code" for a refusal or failure
    internal: bool = False  # the gateway's own call on the caller's behalf (the semantic cache's embeddings)
    client_ip: str | None = None  # only on aggregated unauthenticated refusals
    count: int = 1  # requests this record stands for (>1 only for aggregated refusals)
    # The estimate of each try that reached a backend and was then cut or timed out (Azure may bill it): not in
    # the tokens or the cost above, which are the final answer's; the token limits charge it.
    maybe_billed_tokens: int = 0

    @property
    def day(self) -> str:
        return utc_day(self.time_s)

    @property
    def total_tokens(self) -> int:
        return self.prompt_tokens + self.completion_tokens


@dataclass(slots=True, frozen=True)
class UsageBatch:
    """Records written together. ``batch_id`` is unique; a message naming it goes on the usage queue once the
    records are stored, and the summariser absorbs each batch into the summaries exactly once."""

    batch_id: str
    records: tuple[UsageRecord, ...]

    @property
    def days(self) -> tuple[str, ...]:
        return tuple(sorted({r.day for r in self.records}))


@dataclass(slots=True, frozen=True)
class SummaryKey:
    """One summary row: per UTC day, tenant, user, deployment and model."""

    day: str
    tenant: str
    user: str
    deployment: str  # "" when the request never named one (a 401, a 404)
    model: str


@dataclass(slots=True)
class SummaryTotals:
    """What a summary row adds up. Costs are ``None`` only while every absorbed record's cost was unknown;
    ``unpriced`` counts the records without a price, so a partial sum is never mistaken for the whole."""

    requests: int = 0
    errors: int = 0  # status >= 400
    prompt_tokens: int = 0
    completion_tokens: int = 0
    cached_prompt_tokens: int = 0
    reasoning_tokens: int = 0
    cost_micro_usd: int = 0
    unpriced: int = 0
    cache_hits: int = 0
    saved_tokens: int = 0
    saved_micro_usd: int = 0

    def add(self, record: UsageRecord) -> None:
        self.requests += record.count
        if record.status >= 400:
            self.errors += record.count
        self.prompt_tokens += record.prompt_tokens
        self.completion_tokens += record.completion_tokens
        self.cached_prompt_tokens += record.cached_prompt_tokens
        self.reasoning_tokens += record.reasoning_tokens
        if record.cost_micro_usd is None:
            if record.total_tokens:
                self.unpriced += record.count
        else:
            self.cost_micro_usd += record.cost_micro_usd
        if record.cache in ("HIT", "SEMANTIC-HIT"):
            self.cache_hits += record.count
        self.saved_tokens += record.saved_tokens
        self.saved_micro_usd += record.saved_micro_usd or 0

    def merge(self, other: SummaryTotals) -> None:
        for name in self.__slots__:
            setattr(self, name, getattr(self, name) + getattr(other, name))


def summarise(records: tuple[UsageRecord, ...] | list[UsageRecord]) -> dict[SummaryKey, SummaryTotals]:
    """The summary deltas of ``records``, per summary row."""
    rows: dict[SummaryKey, SummaryTotals] = {}
    for record in records:
        key = SummaryKey(record.day, record.tenant, record.user, record.deployment or "", record.model or "")
        rows.setdefault(key, SummaryTotals()).add(record)
    return rows


def summarise_by_day(
    records: tuple[UsageRecord, ...] | list[UsageRecord],
) -> dict[str, dict[SummaryKey, SummaryTotals]]:
    """``summarise`` grouped by UTC day: each day of a batch is absorbed (and marked absorbed) on its own."""
    by_day: dict[str, dict[SummaryKey, SummaryTotals]] = {}
    for key, totals in summarise(records).items():
        by_day.setdefault(key.day, {})[key] = totals
    return by_day


@dataclass(slots=True, frozen=True)
class RecordQuery:
    """Which records to list: all filters optional; ``from_day``/``to_day`` inclusive UTC days."""

    from_day: str
    to_day: str
    request_id: str | None = None
    tenant: str | None = None
    user: str | None = None
    limit: int = 100


@dataclass(slots=True, frozen=True)
class SummaryQuery:
    from_day: str
    to_day: str
    tenant: str | None = None
    user: str | None = None


@dataclass(slots=True, frozen=True)
class QueueMessage:
    """A message taken from the usage queue; ``receipt`` is what deleting it needs (adapter-specific)."""

    body: str  # the batch id
    dequeue_count: int
    receipt: object = field(default=None, compare=False)


_RECORD_FIELDS = frozenset(UsageRecord.__dataclass_fields__)


def record_to_dict(record: UsageRecord) -> dict[str, object]:
    """``record`` as JSON-able values (the SQLite store's rows, the writer's spill file)."""
    return {name: getattr(record, name) for name in UsageRecord.__dataclass_fields__}


def record_from_dict(data: dict[str, object]) -> UsageRecord:
    """The record ``record_to_dict`` gave; fields it does not know (a newer version's) are ignored."""
    if data.keys() <= _RECORD_FIELDS:  # this version's own record (the summariser reads every one back): as is
        return UsageRecord(**data)  # type: ignore[arg-type]
    return UsageRecord(**{k: v for k, v in data.items() if k in _RECORD_FIELDS})  # type: ignore[arg-type]
