"""bench/semantic_index.py: semantic lookups as a bucket grows, the SQLite cache's numpy index vs sqlite-vec.

Usage: .venv/bin/python bench/semantic_index.py [--sqlite-vec] [sizes...]   (default 1000 10000 50000; 1536 dims)

numpy (the default, what aigw uses): fills one bucket of ``SqliteCache`` with random unit vectors through
``put``, then times ``nearest()``: the first lookup (loads the bucket into the in-memory index) and the median of
50 warm lookups. ``--sqlite-vec`` does the same with a ``vec0`` table of the sqlite-vec extension (partitioned by
bucket, expiry as a metadata column), loaded through ``apsw`` because this Python's ``sqlite3`` cannot load
extensions; it needs ``pip install apsw sqlite-vec`` and is not a dependency of aigw. RSS is this process's
resident memory after the lookups (each size runs in a fresh process), not a peak; it includes what filling
left behind, so the last column, how much the lookups added (the index itself, or SQLite's pages), is the
fairer comparison.
"""

from __future__ import annotations

import asyncio
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

DIMS = 1536


def rss_mb() -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def unit_vectors(size: int) -> Any:
    rng = np.random.default_rng(size)
    vectors = rng.standard_normal((size, DIMS)).astype(np.float32)
    vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
    return vectors


async def measure_numpy(size: int, folder: Path) -> tuple[float, float, float, float, float]:
    from gateway_core.storage.ports import CacheEntry
    from gateway_core.storage.sqlite_cache import SqliteCache

    store = SqliteCache(folder / "cache.db", max_bytes=1 << 40)
    vectors = unit_vectors(size)
    start = time.perf_counter()
    for i, vector in enumerate(vectors):
        await store.put(CacheEntry(f"k{i}", "bucket", b"{}", 0.0, 1e12, 1, 1, tuple(vector.tolist())))
    fill_s = time.perf_counter() - start
    del vectors
    query = tuple(unit_vectors(size)[size // 2].tolist())
    filled_rss = rss_mb()
    start = time.perf_counter()
    found = await store.nearest("bucket", query, 1.0)
    cold_ms = (time.perf_counter() - start) * 1000
    if found is None or found[0].key != f"k{size // 2}":
        raise SystemExit("numpy index: wrong nearest entry")
    warm = []
    for _ in range(50):
        start = time.perf_counter()
        await store.nearest("bucket", query, 1.0)
        warm.append((time.perf_counter() - start) * 1000)
    rss = rss_mb()
    await store.close()
    return fill_s, cold_ms, statistics.median(warm), rss, rss - filled_rss


def measure_sqlite_vec(size: int, folder: Path) -> tuple[float, float, float, float, float]:
    import apsw
    import sqlite_vec

    conn = apsw.Connection(str(folder / "vec.db"))
    conn.enable_load_extension(True)
    conn.load_extension(sqlite_vec.loadable_path())
    conn.execute("PRAGMA journal_mode=WAL")
    conn.execute(
        f"CREATE VIRTUAL TABLE cache_vec USING vec0(bucket text partition key, "
        f"embedding float[{DIMS}] distance_metric=cosine, expires_s float)"
    )
    vectors = unit_vectors(size)
    start = time.perf_counter()
    for i, vector in enumerate(vectors):  # one statement per put, as a gateway would
        conn.execute(
            "INSERT INTO cache_vec (rowid, bucket, embedding, expires_s) VALUES (?, ?, ?, ?)",
            (i + 1, "bucket", vector.tobytes(), 1e12),
        )
    fill_s = time.perf_counter() - start
    query = vectors[size // 2].tobytes()
    del vectors
    sql = "SELECT rowid, distance FROM cache_vec WHERE embedding MATCH ? AND k = 1 AND bucket = ? AND expires_s > ?"
    times = []
    filled_rss = rss_mb()
    for _ in range(51):
        start = time.perf_counter()
        rows = list(conn.execute(sql, (query, "bucket", 1.0)))
        times.append((time.perf_counter() - start) * 1000)
        if rows[0][0] != size // 2 + 1:
            raise SystemExit("sqlite-vec: wrong nearest entry")
    rss = rss_mb()
    conn.close()
    return fill_s, times[0], statistics.median(times[1:]), rss, rss - filled_rss


def one(kind: str, size: int) -> None:
    with tempfile.TemporaryDirectory() as folder:
        if kind == "numpy":
            result = asyncio.run(measure_numpy(size, Path(folder)))
        else:
            result = measure_sqlite_vec(size, Path(folder))
    fill_s, cold_ms, warm_ms, rss, grown = result
    print(f"| {kind} | {size:,} | {fill_s:.1f} | {cold_ms:.1f} | {warm_ms:.2f} | {rss:.0f} | {grown:.0f} |", flush=True)


def main() -> None:
    args = sys.argv[1:]
    if args[:1] == ["--one"]:
        one(args[1], int(args[2]))
        return
    kind = "sqlite-vec" if "--sqlite-vec" in args else "numpy"
    sizes = [int(a) for a in args if a.isdigit()] or [1000, 10000, 50000]
    print(
        f"| index | entries in bucket ({DIMS} dims) | fill s | first lookup ms | warm lookup p50 ms | RSS MB "
        "| RSS grown by the lookups MB |"
    )
    print("|---|---:|---:|---:|---:|---:|---:|", flush=True)
    for size in sizes:  # a fresh process per size, so RSS is that size's alone
        subprocess.run([sys.executable, __file__, "--one", kind, str(size)], check=True)


if __name__ == "__main__":
    main()
