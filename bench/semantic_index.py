"""bench/semantic_index.py: semantic lookup latency of the SQLite cache as a bucket grows (not a test).

Usage: .venv/bin/python bench/semantic_index.py [sizes...]   (default 1000 10000 30000; 1536 dims)
Fills one bucket with random unit vectors, then times nearest(): the first lookup (loads the bucket into the
in-memory index) and the median of 50 warm lookups (one query for new rows plus one matrix product).
"""

from __future__ import annotations

import asyncio
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from gateway_core.storage.ports import CacheEntry
from gateway_core.storage.sqlite import SqliteCache

DIMS = 1536


async def measure(size: int) -> tuple[float, float, float]:
    rng = np.random.default_rng(size)
    with tempfile.TemporaryDirectory() as folder:
        store = SqliteCache(Path(folder) / "cache.db", max_bytes=1 << 40)
        vectors = rng.standard_normal((size, DIMS)).astype(np.float32)
        vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
        start = time.perf_counter()
        for i, vector in enumerate(vectors):
            await store.put(CacheEntry(f"k{i}", "bucket", b"{}", 0.0, 1e12, 1, 1, tuple(vector.tolist())))
        fill_s = time.perf_counter() - start
        query = tuple(vectors[size // 2].tolist())
        start = time.perf_counter()
        found = await store.nearest("bucket", query, 1.0)
        cold_ms = (time.perf_counter() - start) * 1000
        assert found is not None and found[0].key == f"k{size // 2}"
        warm = []
        for _ in range(50):
            start = time.perf_counter()
            await store.nearest("bucket", query, 1.0)
            warm.append((time.perf_counter() - start) * 1000)
        await store.close()
        return fill_s, cold_ms, statistics.median(warm)


async def main() -> None:
    sizes = [int(a) for a in sys.argv[1:]] or [1000, 10000, 30000]
    print(f"| entries in bucket ({DIMS} dims) | fill s | first lookup ms | warm lookup p50 ms |")
    print("|---:|---:|---:|---:|")
    for size in sizes:
        fill_s, cold_ms, warm_ms = await measure(size)
        print(f"| {size:,} | {fill_s:.1f} | {cold_ms:.1f} | {warm_ms:.2f} |")


if __name__ == "__main__":
    asyncio.run(main())
