"""The semantic index's matrix: grows without rebuilding on each insert, and gives memory back."""

from __future__ import annotations

import numpy as np

from gateway_core.cache.vector_index import VectorIndex
from gateway_core.cache.vectors import normalise, pack

DIMS = 16


def row(i: int, expires_s: float = 1e12) -> tuple[int, bytes, float]:
    rng = np.random.default_rng(i)
    return i, pack(normalise(rng.standard_normal(DIMS).tolist())), expires_s


def test_single_inserts_grow_the_matrix_geometrically_not_each_time() -> None:
    index = VectorIndex(DIMS)
    capacities = set()
    for i in range(1, 2001):
        index.add([row(i)])
        capacities.add(index.capacity)
    assert len(index) == 2000
    assert len(capacities) <= 20  # 2,000 inserts, a handful of reallocations (growth by half again)
    best = index.best(normalise(np.frombuffer(row(777)[1], dtype="<f4").tolist()), 0.0)
    assert best is not None and best[0] == 777 and best[1] > 0.999


def test_removed_and_expired_rows_leave_and_memory_shrinks() -> None:
    index = VectorIndex(DIMS)
    index.add([row(i, expires_s=100.0 if i <= 900 else 1e12) for i in range(1, 1001)])
    assert index.capacity >= 1000
    assert index.best(normalise([1.0] * DIMS), now_s=200.0) is not None  # the 900 short ones have expired
    assert len(index) == index.held == 100
    assert index.capacity < 300
    index.remove(range(901, 1001))
    assert len(index) == 0 and index.best(normalise([1.0] * DIMS), 0.0) is None


def test_vectors_of_another_length_are_not_indexed() -> None:
    index = VectorIndex(DIMS)
    index.add([(1, pack((1.0, 0.0)), 1e12), row(2)])
    assert len(index) == 1 and index.last_id == 2
