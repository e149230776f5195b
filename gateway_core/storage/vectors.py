"""Vector helpers shared by the cache adapters: packing and brute-force nearest neighbour."""

from __future__ import annotations

import math
import struct
from collections.abc import Iterable

from .ports import CacheEntry


def pack(vector: tuple[float, ...]) -> bytes:
    return struct.pack(f"<{len(vector)}f", *vector)


def unpack(raw: bytes) -> tuple[float, ...]:
    return struct.unpack(f"<{len(raw) // 4}f", raw)


def normalise(vector: Iterable[float]) -> tuple[float, ...]:
    values = tuple(float(v) for v in vector)
    norm = math.sqrt(sum(v * v for v in values))
    return tuple(v / norm for v in values) if norm else values


def cosine(a: tuple[float, ...], b: tuple[float, ...]) -> float:
    """Cosine similarity of two unit vectors (their dot product); 0 if the dimensions differ."""
    if len(a) != len(b):
        return 0.0
    return float(sum(x * y for x, y in zip(a, b, strict=True)))


def best_match(candidates: Iterable[CacheEntry], vector: tuple[float, ...]) -> tuple[CacheEntry, float] | None:
    best: tuple[CacheEntry, float] | None = None
    for entry in candidates:
        if entry.vector is None:
            continue
        score = cosine(entry.vector, vector)
        if best is None or score > best[1]:
            best = (entry, score)
    return best
