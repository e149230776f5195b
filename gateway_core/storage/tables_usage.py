"""Usage records and summaries in Azure Table Storage (``tables://``); batch messages go on the Storage queue of
tables_queue.py.

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

Key parts are escaped (tables_keys.py); entities are built and read in tables_entities.py.
"""

from __future__ import annotations

import asyncio
import json
import random
import time
from collections.abc import Awaitable
from typing import Any

from ..usage.record import RecordQuery, SummaryKey, SummaryQuery, SummaryTotals, UsageBatch, UsageRecord
from .ports import StorageError
from .tables import AccountClient, TablesTarget, bounded, sdk_errors
from .tables_entities import (
    get_long,
    int64,
    put_long,
    record_entity,
    record_from,
    summary_entity,
    summary_from,
    value_of,
)
from .tables_keys import DAY_MS, day_ms, days_between, key_part, summary_row, utc_day_of_ms

RECORDS_TABLE = "aigwusage"
SUMMARIES_TABLE = "aigwsummaries"
BATCHES = "~batches"  # the partition of batch rows in the records table (days start with a digit)
MAX_OPS = 100  # operations in one entity-group transaction
_FIRST_WINDOW_MS = 1_000  # records reads: the newest window, widened 4x at each step back
_MIN_READ = 64  # records reads: a window holding at most this many (or the records still needed) is read whole
_ABSORB_TRIES = 30  # ETag conflicts in a row before absorb gives up (the message is delivered again later)
_OR_KEYS = 14  # a Table filter holds at most 15 comparisons: the PartitionKey and 14 RowKeys


class TablesUsage:
    """The ``UsageStore`` on Table Storage (see the module docstring for the layout)."""

    def __init__(self, target: TablesTarget) -> None:
        self._target = target
        self._account = AccountClient(target, target.table_service)
        self._records: Any = None
        self._summaries: Any = None
        self._lock = asyncio.Lock()

    async def start(self) -> None:
        async with self._lock:
            if self._records is not None:
                return
            service = self._account.service()
            prefix = self._target.url.prefix
            names = (prefix + RECORDS_TABLE, prefix + SUMMARIES_TABLE)
            if self._target.url.create_if_missing:
                with sdk_errors(self._target, "create tables"):
                    for name in names:
                        await service.create_table_if_not_exists(name)
            self._records, self._summaries = (service.get_table_client(name) for name in names)

    async def _ready(self) -> None:
        if self._records is None:
            await self.start()

    async def close(self) -> None:
        await self._account.close()
        self._records = self._summaries = None

    async def _query(self, table: Any, query: str, **parameters: Any) -> list[dict[str, Any]]:
        with sdk_errors(self._target, "query"):
            return [e async for e in table.query_entities(query, parameters=parameters)]

    # -- records and batches

    async def write_batch(self, batch: UsageBatch) -> None:
        from azure.data.tables import UpdateMode

        await self._ready()
        partitions: dict[str, list[dict[str, Any]]] = {}
        for record in batch.records:
            entity = record_entity(record, batch.batch_id)
            partitions.setdefault(entity["PartitionKey"], []).append(entity)
        upsert = {"mode": UpdateMode.REPLACE}
        transactions = [
            [("upsert", e, upsert) for e in entities[i : i + MAX_OPS]]
            for entities in partitions.values()
            for i in range(0, len(entities), MAX_OPS)
        ]
        with sdk_errors(self._target, f"write batch {batch.batch_id}"):
            await bounded(self._records.submit_transaction(t) for t in transactions)
            await self._mark_written(batch, upsert)

    async def _mark_written(self, batch: UsageBatch, upsert: dict[str, Any]) -> None:
        """The batch rows, after its records: a batch row never names records that are not there."""
        from azure.core.exceptions import ResourceNotFoundError

        batch_key = key_part(batch.batch_id)
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
        info.update(min_ms=int64(min(times)), max_ms=int64(max(times)))
        info["days"] = json.dumps(batch.days)
        put_long(info, "tenants", json.dumps(sorted({key_part(r.tenant) for r in batch.records})))
        pending = {"PartitionKey": BATCHES, "RowKey": f"p|{batch_key}", "batch_id": batch.batch_id, "written_s": now}
        await self._records.submit_transaction([("upsert", info, upsert), ("upsert", pending, upsert)])

    async def batch_records(self, batch_id: str) -> tuple[UsageRecord, ...] | None:
        from azure.core.exceptions import ResourceNotFoundError

        await self._ready()
        with sdk_errors(self._target, f"read batch {batch_id}"):
            try:
                info = await self._records.get_entity(BATCHES, f"b|{key_part(batch_id)}")
            except ResourceNotFoundError:
                return None
        low, high = f"{int(value_of(info, 'min_ms')):013d}-", f"{int(value_of(info, 'max_ms')):013d}."
        query = "PartitionKey eq @pk and RowKey ge @low and RowKey lt @high and batch_id eq @batch"
        found = await bounded(
            self._query(self._records, query, pk=f"{day}|{tenant}", low=low, high=high, batch=batch_id)
            for day in json.loads(info["days"])
            for tenant in json.loads(get_long(info, "tenants"))
        )
        entities = sorted((e for page in found for e in page), key=lambda e: (e["PartitionKey"], e["RowKey"]))
        return tuple(record_from(e) for e in entities)

    async def finish_batch(self, batch_id: str) -> None:
        from azure.data.tables import TableTransactionError, UpdateMode

        await self._ready()
        batch_key = key_part(batch_id)
        done = (
            "upsert",
            {"PartitionKey": BATCHES, "RowKey": f"b|{batch_key}", "finished": True},
            {"mode": UpdateMode.MERGE},
        )
        pending = ("delete", {"PartitionKey": BATCHES, "RowKey": f"p|{batch_key}"})
        with sdk_errors(self._target, f"finish batch {batch_id}"):
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
        days = days_between(query.from_day, query.to_day)
        if not days or query.limit <= 0:
            return found
        start_ms, high = day_ms(days[-1]), day_ms(days[0]) + DAY_MS
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
            found.extend(sorted(map(record_from, entities), key=lambda r: (r.time_s, r.record_id), reverse=True))
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
            "low": f"{utc_day_of_ms(low_ms)}|",
            "high": f"{utc_day_of_ms(high_ms - 1)}}}",
            "first": f"{low_ms:013d}-",
            "after": f"{high_ms:013d}-",
        }
        entities: list[dict[str, Any]] = []
        with sdk_errors(self._target, "query"):
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
            parameters.update(low=f"{key_part(query.tenant)}|", high=f"{key_part(query.tenant)}}}")
            condition += " and tenant eq @tenant"
            parameters["tenant"] = query.tenant
        if query.user is not None:
            condition += " and user eq @user"
            parameters["user"] = query.user
        return dict(map(summary_from, await self._query(self._summaries, condition, **parameters)))

    async def absorb(self, batch_id: str, day: str, rows: dict[SummaryKey, SummaryTotals]) -> bool:
        await self._ready()
        ordered = sorted(rows.items(), key=lambda item: summary_row(item[0]))
        marker = f"~batch|{key_part(batch_id)}"
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
                    operations.append(("create", summary_entity(day, key, delta)))
                    continue
                totals = summary_from(old)[1]
                totals.merge(delta)
                condition = {"mode": UpdateMode.REPLACE, "etag": old.metadata["etag"]}
                condition["match_condition"] = MatchConditions.IfNotModified
                operations.append(("update", summary_entity(day, key, totals), condition))
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

        with sdk_errors(self._target, f"absorb {marker}"):
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

        pages = await bounded(query(group) for group in groups)
        return {e["RowKey"]: e for page in pages for e in page}
