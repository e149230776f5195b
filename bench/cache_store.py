"""Put latency of the SQLite cache store as it fills past its budget (the `all` variant's cache writes).

.venv/bin/python bench/cache_store.py [PUTS] [BUDGET_MIB] [CONCURRENCY]: PUTS unique entries (default 60,000,
a 717-byte body each, as the harness's answer) into a fresh SqliteCache of BUDGET_MIB (default 16), CONCURRENCY
puts at a time (default 32); prints each 10,000 puts' p50, p99 and max put latency (ms, as the caller awaits it)
and the rows, database and WAL size at the end. Run against older code with PYTHONPATH=<export of it>.
"""

from __future__ import annotations

import asyncio
import inspect
import statistics
import sys
import tempfile
import time
from pathlib import Path

from gateway_core.storage.ports import CacheEntry
from gateway_core.storage.sqlite_cache import SqliteCache

BODY = (Path(__file__).parent / "harness" / "chat_body.json").read_bytes()[:717].ljust(717, b" ")


async def main(puts: int, budget_mib: int, concurrency: int, directory: Path) -> None:
    options = {"max_bytes": budget_mib * 1024 * 1024}
    if "max_pending" in inspect.signature(SqliteCache).parameters:
        options["max_pending"] = max(1024, concurrency)
    store = SqliteCache(directory / "cache.db", **options)
    await store.start()
    latencies: list[float] = []

    async def put(i: int) -> None:
        now = time.time()
        started = time.perf_counter()
        await store.put(CacheEntry(f"{i:064x}", "gpt-4o", BODY, now, now + 3600, 20, 100))
        latencies.append((time.perf_counter() - started) * 1000)

    began = time.perf_counter()
    for start in range(0, puts, concurrency):
        await asyncio.gather(*(put(i) for i in range(start, min(puts, start + concurrency))))
        if len(latencies) >= 10_000 or start + concurrency >= puts:
            q = statistics.quantiles(latencies, n=100)
            print(f"puts to {start + concurrency:>6}: p50 {q[49]:6.2f}  p99 {q[98]:6.2f}  max {max(latencies):7.2f} ms")
            latencies.clear()
    elapsed = time.perf_counter() - began
    rows = await store._db.run(lambda conn: conn.execute("SELECT count(*) FROM cache").fetchone()[0])
    await store.close()
    wal = directory / "cache.db-wal"
    print(
        f"{puts / elapsed:,.0f} puts/s; {rows} rows; db {(directory / 'cache.db').stat().st_size / 2**20:.1f} MiB, "
        f"wal {wal.stat().st_size / 2**20 if wal.exists() else 0:.1f} MiB"
    )


if __name__ == "__main__":
    args = [int(a) for a in sys.argv[1:]]
    with tempfile.TemporaryDirectory() as tmp:
        asyncio.run(main(*(args + [60_000, 16, 32][len(args) :]), Path(tmp)))  # type: ignore[arg-type]
