"""bench/usage_tables.py: requests and records/s of the Table Storage usage adapters, against Azurite (not a test).

Starts Azurite on free loopback ports (on disk in a temporary directory), writes 1,000 usage records in batches
(each batch: ``write_batch`` then a queue message), then summarises them as the queue consumer does (receive,
``batch_records``, ``absorb`` per day, ``finish_batch``, delete). Counts every REST request the SDKs send and
prints them per phase, with the records written per second. Layouts: batch size x tenants x days.
"""

from __future__ import annotations

import asyncio
import sys
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any, ClassVar

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from gateway_core.storage import tables, tables_queue, tables_usage
from gateway_core.store_urls import TablesURL, parse_store_url
from gateway_core.usage.record import UsageBatch, UsageRecord, summarise
from tests.azurite import run_azurite

DAY_S = 1_767_225_600.0  # 2026-01-01T00:00:00Z
LAYOUTS = [(100, 1, 1), (100, 4, 2), (250, 3, 2), (1000, 1, 1)]


class Counted(tables.TablesTarget):
    """The adapters' target, with a hook on each client that counts the requests it sends."""

    requests: ClassVar[list[int]] = [0]

    def table_service(self, credential: Any) -> Any:
        from azure.data.tables.aio import TableServiceClient

        return TableServiceClient.from_connection_string(self.connection_string, raw_response_hook=self._count)

    def queue_service(self, credential: Any) -> Any:
        from azure.storage.queue.aio import QueueServiceClient

        return QueueServiceClient.from_connection_string(self.connection_string, raw_response_hook=self._count)

    @staticmethod
    def _count(_response: Any) -> None:
        Counted.requests[0] += 1


def record(n: int, tenants: int, days: int) -> UsageRecord:
    record_id = uuid.uuid4().hex
    return UsageRecord(
        record_id=record_id,
        time_s=DAY_S + (n % days) * 86_400 + n,
        request_id=record_id,
        tenant=f"tenant-{n % tenants}",
        user=f"user-{n % 5}",
        key_id="k1",
        method="POST",
        path="/openai/deployments/gpt-4o/chat/completions",
        status=200,
        deployment="gpt-4o",
        model="gpt-4o",
        prompt_tokens=100,
        completion_tokens=20,
        cost_micro_usd=450,
    )


async def run(connection_string: str, batch_size: int, tenants: int, days: int) -> None:
    prefix = f"b{uuid.uuid4().hex[:8]}"
    url = parse_store_url(f"tables://?connection_env=X&create_if_missing=true&prefix={prefix}", "usage")
    assert isinstance(url, TablesURL)
    target = Counted(url, connection_string)
    store, queue = tables_usage.TablesUsage(target), tables_queue.StorageQueue(target)
    await store.start()
    await queue.start()
    records = [record(n, tenants, days) for n in range(1000)]
    batches = [UsageBatch(uuid.uuid4().hex, tuple(records[i : i + batch_size])) for i in range(0, 1000, batch_size)]
    Counted.requests[0] = 0
    started = time.perf_counter()
    for batch in batches:
        await store.write_batch(batch)
        await queue.send(batch.batch_id)
    write_s, written = time.perf_counter() - started, Counted.requests[0]
    Counted.requests[0] = 0
    started = time.perf_counter()
    while messages := await queue.receive(32, 30):
        for message in messages:
            got = await store.batch_records(message.body) or ()
            rows = summarise(got)
            for day in sorted({r.day for r in got}):
                await store.absorb(message.body, day, {k: v for k, v in rows.items() if k.day == day})
            await store.finish_batch(message.body)
            await queue.delete(message)
    summarise_s = time.perf_counter() - started
    print(
        f"{len(batches):>3} batches of {batch_size:>4}, {tenants} tenants, {days} days: "
        f"write {written:>3} requests, {1000 / write_s:>4.0f} records/s; "
        f"summarise {Counted.requests[0]:>3} requests, {summarise_s:.1f} s"
    )
    await store.close()
    await queue.close()


async def main(connection_string: str) -> None:
    for layout in LAYOUTS:
        await run(connection_string, *layout)


if __name__ == "__main__":
    with tempfile.TemporaryDirectory() as location, run_azurite(Path(location)) as azurite:
        asyncio.run(main(azurite.connection_string))
