"""Usage records and summaries in Azure Table Storage, batch messages on a Storage queue (``tables://``).

Table ``aigwusage``: one entity per record, PartitionKey ``<UTC day>|<tenant>``, RowKey ``<time ms, 13
digits>-<record_id>`` (sorted by time, unique); every record property as written (``None`` left absent, money
as Int64) plus ``batch_id``. Written with batch transactions of up to 100 upserts per partition, so a retried
batch leaves one copy. Partition ``~batches`` holds two rows per batch: ``b|<batch>`` (when written, the days,
tenant keys and time range it touched, so ``batch_records`` reads only those partitions) and ``p|<batch>``
while it is pending; ``finish_batch`` deletes the second and marks the first finished, in one transaction.

Table ``aigwsummaries``: PartitionKey ``<UTC day>``, RowKey ``<tenant>|<user>|<deployment>|<model>``, and a
marker row ``~batch|<batch>`` per absorbed batch in the same partition, so ``absorb`` is ONE entity-group
transaction: each summary row replaced under its ETag (or created) plus the marker created. The marker already
there fails the transaction: the batch was absorbed. An ETag conflict (a concurrent absorb): read again, retry.
A day with more than 99 rows in one batch is absorbed in chunks of 99, each with its own marker
(``~batch|<batch>|<n>``), in a deterministic order, so a redelivery completes what a crash left half done.

Key parts are escaped (``_key``): Table keys forbid ``/ \\ # ?`` and control characters, ``|`` separates the
parts and ``~`` starts marker rows, so everything outside ``[A-Za-z0-9._@-]`` becomes ``!XX`` per UTF-8 byte;
an escaped name longer than 100 characters is cut and ends with ``~`` and a SHA-256 of the whole name (Table
keys hold at most 1 KiB). The names themselves are properties of each entity, and reads compare them too.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import contextlib
import hashlib
import json
import math
import random
import time
import typing
from collections.abc import Awaitable, Iterable, Iterator
from dataclasses import MISSING, dataclass, fields
from datetime import date, timedelta
from typing import Any

from ..store_urls import TablesURL
from ..usage.record import (
    QueueMessage,
    RecordQuery,
    SummaryKey,
    SummaryQuery,
    SummaryTotals,
    UsageBatch,
    UsageRecord,
)
from .ports import StorageError

RECORDS_TABLE = "aigwusage"
SUMMARIES_TABLE = "aigwsummaries"
QUEUE = "aigw-usage"
POISON_QUEUE = "aigw-usage-poison"
BATCHES = "~batches"  # the partition of batch rows in the records table (days start with a digit)
MAX_OPS = 100  # operations in one entity-group transaction
_SAFE = frozenset("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789._@-")
_MAX_KEY_PART = 100
_DAY_MS = 86_400_000
_EPOCH = date(1970, 1, 1)
_FIRST_WINDOW_MS = 1_000  # records reads: the newest window, widened 4x at each step back
_MIN_READ = 64  # records reads: a window holding at most this many (or the records still needed) is read whole
_ABSORB_TRIES = 30  # ETag conflicts in a row before absorb gives up (the message is delivered again later)
_OR_KEYS = 14  # a Table filter holds at most 15 comparisons: the PartitionKey and 14 RowKeys
_PARALLEL = 8  # transactions or queries in flight for one call
_CHUNK_CHARS = 30_000  # a String property holds 64 KiB (UTF-16): long lists are split over several
# A record's strings are cut here: one 40,000-character path (a client's) would fail its whole batch, forever.
MAX_STRING_CHARS = 16_000
_HINTS = typing.get_type_hints(UsageRecord)
# The SDKs' own retries are short (3, within seconds; Storage's default waits 15 s and more between tries): the
# usage writer retries whole batches with its own backoff, and a Functions invocation must not hang on one call.
_TIMEOUTS: dict[str, Any] = {"connection_timeout": 10, "read_timeout": 30}


@dataclass(frozen=True, slots=True)
class TablesTarget:
    """Where a ``tables://`` URL points: a connection string, or an account reached with DefaultAzureCredential."""

    url: TablesURL
    connection_string: str | None

    def credential(self) -> Any:
        """DefaultAzureCredential for an account (managed identity in Azure; a user-assigned identity is chosen
        by ``AZURE_CLIENT_ID``), None with a connection string. Its owner closes it."""
        if self.connection_string is not None:
            return None
        from azure.identity.aio import DefaultAzureCredential

        return DefaultAzureCredential()

    def table_service(self, credential: Any) -> Any:
        from azure.data.tables.aio import TableServiceClient

        options = {**_TIMEOUTS, "retry_total": 3, "retry_backoff_factor": 0.2, "retry_backoff_max": 2}
        if self.connection_string is not None:
            return TableServiceClient.from_connection_string(self.connection_string, **options)
        endpoint = f"https://{self.url.account}.table.core.windows.net"
        return TableServiceClient(endpoint, credential=credential, **options)

    def queue_service(self, credential: Any) -> Any:
        from azure.storage.queue.aio import QueueServiceClient

        # The SDK's ExponentialRetry waits initial + base**n s (give or take the jitter): here about 2 s each.
        options = {**_TIMEOUTS, "retry_total": 3, "initial_backoff": 1, "increment_base": 1, "random_jitter_range": 1}
        if self.connection_string is not None:
            return QueueServiceClient.from_connection_string(self.connection_string, **options)
        endpoint = f"https://{self.url.account}.queue.core.windows.net"
        return QueueServiceClient(endpoint, credential=credential, **options)

    @property
    def where(self) -> str:
        return f"account {self.url.account}" if self.url.account else f"${self.url.connection_env}"


@contextlib.contextmanager
def _errors(target: TablesTarget, what: str) -> Iterator[None]:
    """SDK and network failures become one ``StorageError`` that names the store, not its keys."""
    from azure.core.exceptions import AzureError

    try:
        yield
    except (AzureError, OSError, ValueError) as exc:
        first = (str(exc).splitlines() or [""])[0][:200]
        raise StorageError(f"Table Storage ({target.where}): {what}: {type(exc).__name__}: {first}") from exc


def _key(name: str) -> str:
    """``name`` as one part of a Table key: escaped, reversible up to 100 characters, hashed beyond."""
    escaped = "".join(c if c in _SAFE else _hex(c) for c in name)
    if len(escaped) <= _MAX_KEY_PART:
        return escaped
    cut = escaped[:60]
    cut = cut[: cut.rfind("!")] if "!" in cut[-2:] else cut  # never half an escape
    return f"{cut}~{hashlib.sha256(name.encode('utf-8', 'surrogatepass')).hexdigest()[:40]}"


def _hex(char: str) -> str:
    return "".join(f"!{byte:02X}" for byte in char.encode("utf-8", "surrogatepass"))


def unescape(part: str) -> str:
    """The name an unhashed ``_key`` part stands for (for people reading the tables)."""
    data = bytearray()
    i = 0
    while i < len(part):
        if part[i] == "!":
            data.append(int(part[i + 1 : i + 3], 16))
            i += 3
        else:
            data.extend(part[i].encode())
            i += 1
    return data.decode("utf-8", "surrogatepass")


def record_partition(day: str, tenant: str) -> str:
    return f"{day}|{_key(tenant)}"


def record_row(record: UsageRecord) -> str:
    return f"{max(0, int(record.time_s * 1000)):013d}-{_key(record.record_id)}"


def summary_row(key: SummaryKey) -> str:
    return "|".join(_key(part) for part in (key.tenant, key.user, key.deployment, key.model))


def _days(from_day: str, to_day: str) -> list[str]:
    """Every UTC day from ``from_day`` to ``to_day`` inclusive, newest first."""
    try:
        first, last = date.fromisoformat(from_day), date.fromisoformat(to_day)
    except ValueError:
        return []
    return [(last - timedelta(days=n)).isoformat() for n in range(max(0, (last - first).days + 1))]


def _day_ms(day: str) -> int:
    """Unix ms at the start of UTC ``day``."""
    return (date.fromisoformat(day) - _EPOCH).days * _DAY_MS


def _utc_day_of_ms(ms: int) -> str:
    return (_EPOCH + timedelta(milliseconds=max(0, ms))).isoformat()


def _record_entity(record: UsageRecord, batch_id: str) -> dict[str, Any]:
    entity: dict[str, Any] = {
        "PartitionKey": record_partition(record.day, record.tenant),
        "RowKey": record_row(record),
        "batch_id": batch_id,
    }
    for f in fields(UsageRecord):
        value = getattr(record, f.name)
        if value is None:
            continue  # absent property: None is never confused with 0 or ""
        if isinstance(value, str):
            value = value[:MAX_STRING_CHARS]
        money = f.name.endswith("micro_usd")
        if isinstance(value, int) and not isinstance(value, bool) and (money or not -(2**31) <= value < 2**31):
            value = _int64(value)
        entity[f.name] = value
    return entity


def _int64(value: int) -> Any:
    from azure.data.tables import EdmType, EntityProperty

    return EntityProperty(value, EdmType.INT64)


def _value(entity: dict[str, Any], name: str) -> Any:
    value = entity.get(name)
    return getattr(value, "value", value)  # Int64 properties come back as EntityProperty


def _record_from(entity: dict[str, Any]) -> UsageRecord:
    values: dict[str, Any] = {}
    for f in fields(UsageRecord):
        if f.name not in entity:
            if f.default is MISSING:  # a required field written as None (key_id): absent stands for None
                values[f.name] = None
            continue
        value = _value(entity, f.name)
        # A Double property written as 2.0 may be read back as 2: the record's own type decides.
        if float in typing.get_args(_HINTS[f.name]) or _HINTS[f.name] is float:
            value = float(value)
        values[f.name] = value
    return UsageRecord(**values)


def _summary_entity(day: str, key: SummaryKey, totals: SummaryTotals) -> dict[str, Any]:
    entity: dict[str, Any] = {"PartitionKey": day, "RowKey": summary_row(key), "day": day}
    entity.update(tenant=key.tenant, user=key.user, deployment=key.deployment, model=key.model)
    for name in SummaryTotals.__slots__:
        entity[name] = _int64(getattr(totals, name))
    return entity


def _summary_from(entity: dict[str, Any]) -> tuple[SummaryKey, SummaryTotals]:
    key = SummaryKey(entity["day"], entity["tenant"], entity["user"], entity["deployment"], entity["model"])
    totals = SummaryTotals(**{name: int(_value(entity, name) or 0) for name in SummaryTotals.__slots__})
    return key, totals


def _put_long(entity: dict[str, Any], name: str, text: str) -> None:
    chunks = [text[i : i + _CHUNK_CHARS] for i in range(0, len(text), _CHUNK_CHARS)] or [""]
    entity[f"{name}_chunks"] = len(chunks)
    for n, chunk in enumerate(chunks):
        entity[f"{name}_{n}"] = chunk


def _get_long(entity: dict[str, Any], name: str) -> str:
    return "".join(entity[f"{name}_{n}"] for n in range(int(_value(entity, f"{name}_chunks"))))


async def _bounded(calls: Iterable[Awaitable[Any]]) -> list[Any]:
    """Every call's result, ``_PARALLEL`` at a time; the first failure is raised once all have ended."""
    gate = asyncio.Semaphore(_PARALLEL)

    async def one(call: Awaitable[Any]) -> Any:
        async with gate:
            return await call

    results = await asyncio.gather(*(one(c) for c in calls), return_exceptions=True)
    for result in results:
        if isinstance(result, BaseException):
            raise result
    return results


class TablesUsage:
    """The ``UsageStore`` on Table Storage (see the module docstring for the layout)."""

    def __init__(self, target: TablesTarget) -> None:
        self._target = target
        self._credential: Any = None
        self._service: Any = None
        self._records: Any = None
        self._summaries: Any = None
        self._lock = asyncio.Lock()

    async def start(self) -> None:
        async with self._lock:
            if self._records is not None:
                return
            if self._service is None:  # kept for close() even if creating the tables fails
                with _errors(self._target, "connect"):  # a malformed connection string is a ValueError
                    self._credential = self._target.credential()
                    self._service = self._target.table_service(self._credential)
            service = self._service
            prefix = self._target.url.prefix
            names = (prefix + RECORDS_TABLE, prefix + SUMMARIES_TABLE)
            if self._target.url.create_if_missing:
                with _errors(self._target, "create tables"):
                    for name in names:
                        await service.create_table_if_not_exists(name)
            self._records, self._summaries = (service.get_table_client(name) for name in names)

    async def _ready(self) -> None:
        if self._records is None:
            await self.start()

    async def close(self) -> None:
        if self._service is not None:
            await self._service.close()
        if self._credential is not None:
            await self._credential.close()
        self._credential = self._service = self._records = self._summaries = None

    async def _query(self, table: Any, query: str, **parameters: Any) -> list[dict[str, Any]]:
        with _errors(self._target, "query"):
            return [e async for e in table.query_entities(query, parameters=parameters)]

    # -- records and batches

    async def write_batch(self, batch: UsageBatch) -> None:
        from azure.data.tables import UpdateMode

        await self._ready()
        partitions: dict[str, list[dict[str, Any]]] = {}
        for record in batch.records:
            entity = _record_entity(record, batch.batch_id)
            partitions.setdefault(entity["PartitionKey"], []).append(entity)
        upsert = {"mode": UpdateMode.REPLACE}
        transactions = [
            [("upsert", e, upsert) for e in entities[i : i + MAX_OPS]]
            for entities in partitions.values()
            for i in range(0, len(entities), MAX_OPS)
        ]
        with _errors(self._target, f"write batch {batch.batch_id}"):
            await _bounded(self._records.submit_transaction(t) for t in transactions)
            await self._mark_written(batch, upsert)

    async def _mark_written(self, batch: UsageBatch, upsert: dict[str, Any]) -> None:
        """The batch rows, after its records: a batch row never names records that are not there."""
        from azure.core.exceptions import ResourceNotFoundError

        batch_key = _key(batch.batch_id)
        try:
            old = await self._records.get_entity(BATCHES, f"b|{batch_key}")
            if old.get("finished"):
                return  # a retried write of a finished batch: it stays finished
        except ResourceNotFoundError:
            pass
        now = time.time()
        times = [max(0, int(r.time_s * 1000)) for r in batch.records] or [0]
        info: dict[str, Any] = {"PartitionKey": BATCHES, "RowKey": f"b|{batch_key}", "batch_id": batch.batch_id}
        info.update(written_s=now, finished=False, records=len(batch.records))
        info.update(min_ms=_int64(min(times)), max_ms=_int64(max(times)))
        info["days"] = json.dumps(batch.days)
        _put_long(info, "tenants", json.dumps(sorted({_key(r.tenant) for r in batch.records})))
        pending = {"PartitionKey": BATCHES, "RowKey": f"p|{batch_key}", "batch_id": batch.batch_id, "written_s": now}
        await self._records.submit_transaction([("upsert", info, upsert), ("upsert", pending, upsert)])

    async def batch_records(self, batch_id: str) -> tuple[UsageRecord, ...] | None:
        from azure.core.exceptions import ResourceNotFoundError

        await self._ready()
        with _errors(self._target, f"read batch {batch_id}"):
            try:
                info = await self._records.get_entity(BATCHES, f"b|{_key(batch_id)}")
            except ResourceNotFoundError:
                return None
        low, high = f"{int(_value(info, 'min_ms')):013d}-", f"{int(_value(info, 'max_ms')):013d}."
        query = "PartitionKey eq @pk and RowKey ge @low and RowKey lt @high and batch_id eq @batch"
        found = await _bounded(
            self._query(self._records, query, pk=f"{day}|{tenant}", low=low, high=high, batch=batch_id)
            for day in json.loads(info["days"])
            for tenant in json.loads(_get_long(info, "tenants"))
        )
        entities = sorted((e for page in found for e in page), key=lambda e: (e["PartitionKey"], e["RowKey"]))
        return tuple(_record_from(e) for e in entities)

    async def finish_batch(self, batch_id: str) -> None:
        from azure.data.tables import TableTransactionError, UpdateMode

        await self._ready()
        batch_key = _key(batch_id)
        done = (
            "upsert",
            {"PartitionKey": BATCHES, "RowKey": f"b|{batch_key}", "finished": True},
            {"mode": UpdateMode.MERGE},
        )
        pending = ("delete", {"PartitionKey": BATCHES, "RowKey": f"p|{batch_key}"})
        with _errors(self._target, f"finish batch {batch_id}"):
            try:
                await self._records.submit_transaction([done, pending])
            except TableTransactionError as exc:
                if getattr(exc, "error_code", None) != "ResourceNotFound":
                    raise
                await self._records.submit_transaction([done])  # finished before: no pending row to delete

    async def pending_batches(self, written_before_s: float) -> list[str]:
        await self._ready()
        query = "PartitionKey eq @pk and RowKey ge 'p|' and RowKey lt 'p}' and written_s lt @before"
        rows = await self._query(self._records, query, pk=BATCHES, before=float(written_before_s))
        return [str(e["batch_id"]) for e in rows]

    async def records(self, query: RecordQuery) -> list[UsageRecord]:
        """Newest first, reading no more than ``limit`` needs. Table Storage returns keys in ascending order
        only, but a RowKey starts with the record's time (ms), so time windows are read from the newest back:
        the last second (and any later part of the range), then windows four times wider each, until ``limit``
        records are found (a wide range that is mostly empty costs a few queries). A window holding more than
        it may return (the records still needed, at least ``_MIN_READ``) is not read to its end: it is tried
        again narrower (at least halved, as narrow as what was read suggests); a single millisecond that holds
        more gives what one read of it holds."""
        await self._ready()
        conditions = ["PartitionKey ge @low", "PartitionKey lt @high", "RowKey ge @first", "RowKey lt @after"]
        parameters: dict[str, Any] = {}
        for name in ("request_id", "tenant", "user"):
            if getattr(query, name) is not None:
                conditions.append(f"{name} eq @{name}")
                parameters[name] = getattr(query, name)
        found: list[UsageRecord] = []
        days = _days(query.from_day, query.to_day)
        if not days or query.limit <= 0:
            return found
        start_ms, high = _day_ms(days[-1]), _day_ms(days[0]) + _DAY_MS
        width = high - max(start_ms, min(high, int(time.time() * 1000)) - _FIRST_WINDOW_MS)
        first, full = True, start_ms  # [full, high) holds more than a read may return
        while high > start_ms and len(found) < query.limit:
            low = max(start_ms, high - width)
            needed = query.limit - len(found)
            cap = max(needed, _MIN_READ)
            entities = await self._read_window(" and ".join(conditions), parameters, low, high, cap)
            if len(entities) > cap and high - low > 1:
                # The times read say how wide a window holds ``needed`` where the records are this dense.
                times = [int(str(e["RowKey"])[:13]) for e in entities]
                held_ms = max(1, max(times) - min(times))
                width = max(1, min((high - low) // 2, held_ms * needed // len(entities)))
                full = low
                continue
            found.extend(sorted(map(_record_from, entities), key=lambda r: (r.time_s, r.record_id), reverse=True))
            high, width, first = low, _FIRST_WINDOW_MS * 4 if first else width * 4, False
            if high > full:  # widen, but never again over all of a span known to be too full: halve it
                width = min(width, max(1, (high - full) // 2))
            else:
                full = start_ms
        return found[: query.limit]

    async def _read_window(
        self, condition: str, parameters: dict[str, Any], low_ms: int, high_ms: int, cap: int
    ) -> list[dict[str, Any]]:
        """The entities with a RowKey time in [low_ms, high_ms), at most ``cap + 1`` (more than ``cap``: the
        window holds more than was read)."""
        window = {
            "low": f"{_utc_day_of_ms(low_ms)}|",
            "high": f"{_utc_day_of_ms(high_ms - 1)}}}",
            "first": f"{low_ms:013d}-",
            "after": f"{high_ms:013d}-",
        }
        entities: list[dict[str, Any]] = []
        with _errors(self._target, "query"):
            pages = self._records.query_entities(
                condition, parameters={**parameters, **window}, results_per_page=min(cap + 1, 1000)
            )
            async for entity in pages:
                entities.append(entity)
                if len(entities) > cap:
                    break
        return entities

    # -- summaries

    async def summaries(self, query: SummaryQuery) -> dict[SummaryKey, SummaryTotals]:
        await self._ready()
        condition = "PartitionKey ge @first and PartitionKey le @last and RowKey ge @low and RowKey lt @high"
        parameters: dict[str, Any] = {"first": query.from_day, "last": query.to_day, "low": "", "high": "~"}
        if query.tenant is not None:  # summary rows sort before the ~batch markers, a tenant's rows together
            parameters.update(low=f"{_key(query.tenant)}|", high=f"{_key(query.tenant)}}}")
            condition += " and tenant eq @tenant"
            parameters["tenant"] = query.tenant
        if query.user is not None:
            condition += " and user eq @user"
            parameters["user"] = query.user
        return dict(map(_summary_from, await self._query(self._summaries, condition, **parameters)))

    async def absorb(self, batch_id: str, day: str, rows: dict[SummaryKey, SummaryTotals]) -> bool:
        await self._ready()
        ordered = sorted(rows.items(), key=lambda item: summary_row(item[0]))
        marker = f"~batch|{_key(batch_id)}"
        if len(ordered) < MAX_OPS:
            return await self._absorb_chunk(day, marker, ordered)
        chunks = [ordered[i : i + MAX_OPS - 1] for i in range(0, len(ordered), MAX_OPS - 1)]
        done = [await self._absorb_chunk(day, f"{marker}|{n}", chunk) for n, chunk in enumerate(chunks)]
        return any(done)

    async def _absorb_chunk(self, day: str, marker: str, rows: list[tuple[SummaryKey, SummaryTotals]]) -> bool:
        from azure.core import MatchConditions
        from azure.data.tables import UpdateMode

        for attempt in range(_ABSORB_TRIES):
            current = await self._read_rows(day, [marker, *(summary_row(k) for k, _ in rows)])
            if marker in current:
                return False
            operations: list[Any] = []
            for key, delta in rows:
                old = current.get(summary_row(key))
                if old is None:
                    operations.append(("create", _summary_entity(day, key, delta)))
                    continue
                totals = _summary_from(old)[1]
                totals.merge(delta)
                condition = {"mode": UpdateMode.REPLACE, "etag": old.metadata["etag"]}
                condition["match_condition"] = MatchConditions.IfNotModified
                operations.append(("update", _summary_entity(day, key, totals), condition))
            operations.append(("create", {"PartitionKey": day, "RowKey": marker, "absorbed_s": time.time()}))
            done = await self._submit_absorb(operations, marker)
            if done is not None:
                return done
            # Another absorb changed a row first: read again, after a short random pause so the two part.
            await asyncio.sleep(random.uniform(0, min(0.5, 0.01 * 2**attempt)))
        raise StorageError(f"Table Storage ({self._target.where}): absorb {marker}: {_ABSORB_TRIES} ETag conflicts")

    async def _submit_absorb(self, operations: list[Any], marker: str) -> bool | None:
        """True: absorbed; False: the marker was there (absorbed before); None: a row changed, read again."""
        from azure.data.tables import TableTransactionError

        with _errors(self._target, f"absorb {marker}"):
            try:
                await self._summaries.submit_transaction(operations)
                return True
            except TableTransactionError as exc:
                code = getattr(exc, "error_code", None)  # set by the SDK from the answer
                if code == "EntityAlreadyExists" and exc.index == len(operations) - 1:
                    return False  # absorbed by a concurrent delivery of the same message
                if code in ("UpdateConditionNotSatisfied", "EntityAlreadyExists"):
                    return None  # another absorb replaced or created one of the rows first
                raise

    async def _read_rows(self, day: str, row_keys: list[str]) -> dict[str, Any]:
        groups = [row_keys[i : i + _OR_KEYS] for i in range(0, len(row_keys), _OR_KEYS)]

        def query(group: list[str]) -> Awaitable[list[dict[str, Any]]]:
            ors = " or ".join(f"RowKey eq @r{n}" for n in range(len(group)))
            keys = {f"r{n}": key for n, key in enumerate(group)}
            return self._query(self._summaries, f"PartitionKey eq @pk and ( {ors} )", pk=day, **keys)

        pages = await _bounded(query(group) for group in groups)
        return {e["RowKey"]: e for page in pages for e in page}


class StorageQueue:
    """The ``UsageQueue`` on a Storage queue: ``aigw-usage``, base64 messages (what the Functions queue trigger
    decodes), and ``aigw-usage-poison`` for messages that cannot be processed (JSON: batch id and reason)."""

    def __init__(self, target: TablesTarget) -> None:
        self._target = target
        self._credential: Any = None
        self._service: Any = None
        self._queue: Any = None
        self._poison: Any = None
        self._lock = asyncio.Lock()

    async def start(self) -> None:
        from azure.storage.queue import TextBase64EncodePolicy

        async with self._lock:
            if self._queue is not None:
                return
            if self._service is None:  # kept for close() even if creating the queues fails
                with _errors(self._target, "connect"):  # a malformed connection string is a ValueError
                    self._credential = self._target.credential()
                    self._service = self._target.queue_service(self._credential)
            service = self._service
            prefix = self._target.url.prefix
            # Received messages are decoded here, not by the SDK: a message that is not base64 (put there by
            # something else) must reach the poison queue, not stop every receive.
            queue, poison = (
                service.get_queue_client(prefix + name, message_encode_policy=TextBase64EncodePolicy())
                for name in (QUEUE, POISON_QUEUE)
            )
            if self._target.url.create_if_missing:
                from azure.core.exceptions import ResourceExistsError

                with _errors(self._target, "create queues"):
                    for client in (queue, poison):
                        with contextlib.suppress(ResourceExistsError):
                            await client.create_queue()
            self._queue, self._poison = queue, poison

    async def _ready(self) -> Any:
        if self._queue is None:
            await self.start()
        return self._queue

    async def close(self) -> None:
        if self._service is not None:
            await self._service.close()
        if self._credential is not None:
            await self._credential.close()
        self._credential = self._service = self._queue = self._poison = None

    async def send(self, batch_id: str) -> None:
        queue = await self._ready()
        with _errors(self._target, "send"):
            await queue.send_message(batch_id)

    async def receive(self, max_messages: int, visibility_timeout_s: float) -> list[QueueMessage]:
        """At most 32 messages at once (the service's limit); the timeout is whole seconds, at least 1."""
        queue = await self._ready()
        count = max(1, min(32, max_messages))
        timeout = max(1, math.ceil(visibility_timeout_s))
        with _errors(self._target, "receive"):
            pages = queue.receive_messages(messages_per_page=count, visibility_timeout=timeout, max_messages=count)
            got = [m async for m in pages]
        return [QueueMessage(_decode(m.content), m.dequeue_count or 1, (m.id, m.pop_receipt)) for m in got]

    async def delete(self, message: QueueMessage) -> None:
        """Deleting a message already deleted, or received again by another consumer since, does nothing."""
        from azure.core.exceptions import HttpResponseError, ResourceNotFoundError

        queue = await self._ready()
        message_id, pop_receipt = typing.cast(tuple[str, str], message.receipt)
        with _errors(self._target, "delete"):
            try:
                await queue.delete_message(message_id, pop_receipt)
            except ResourceNotFoundError:
                pass
            except HttpResponseError as exc:
                if getattr(exc, "error_code", None) != "PopReceiptMismatch":
                    raise

    async def poison(self, message: QueueMessage, reason: str) -> None:
        await self._ready()
        body = json.dumps({"batch_id": message.body, "reason": reason, "dequeue_count": message.dequeue_count})
        with _errors(self._target, "poison"):
            await self._poison.send_message(body)
        await self.delete(message)


def _decode(content: Any) -> str:
    """A base64 message's text; anything else as it came (the summariser then poisons it)."""
    text = content.decode("utf-8", "replace") if isinstance(content, bytes) else str(content)
    try:
        return base64.b64decode(text, validate=True).decode("utf-8")
    except (binascii.Error, UnicodeDecodeError):
        return text
