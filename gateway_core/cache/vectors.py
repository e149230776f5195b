"""Vector maths of the semantic cache: unit vectors, cosine similarity, packing.

Pure logic with no store behind it: the cache policy normalises with it, the store adapters compare with it.
The numpy index is in ``vector_index``, imported only where the semantic cache is used, so a gateway without
it never loads numpy.
"""

from __future__ import annotations

import math
import struct
from collections.abc import Iterable


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
