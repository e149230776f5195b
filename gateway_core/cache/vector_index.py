"""The numpy index of one semantic-cache bucket, used by the SQLite cache store.

In its own module because numpy costs each worker ~15 MB: the store imports it on the first semantic lookup,
so a gateway without the semantic cache never loads numpy.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import numpy as np


class VectorIndex:
    """One bucket's vectors in one float32 matrix, kept in step with the rows of a store.

    Rows are appended in place (the matrix grows by half again when full, so an insert copies nothing on
    average); expired and removed rows are masked at lookup and compacted away once they are a quarter of the
    matrix, so memory follows the live rows. Not thread-safe: the SQLite adapter uses it from its own thread.
    """

    def __init__(self, dims: int) -> None:
        self.dims = dims
        self.last_id = 0  # the highest row id seen: rows added by others since are read by ``id > last_id``
        self.synced_s = 0.0  # when the rows that others deleted were last dropped (monotonic seconds)
        self.used_s = 0.0  # the last lookup (monotonic seconds)
        self._n = 0
        self._dead = 0
        self._ids = np.empty(0, dtype=np.int64)
        self._expires = np.empty(0, dtype=np.float64)
        self._matrix = np.empty((0, dims), dtype=np.float32)

    def __len__(self) -> int:
        return self._n - self._dead

    @property
    def held(self) -> int:
        """Rows in the matrix, live or dead (dead ones go at the next compaction)."""
        return self._n

    @property
    def capacity(self) -> int:
        """Rows the matrix has room for without growing."""
        return len(self._ids)

    def reserve(self, rows: int) -> None:
        """Make room for ``rows`` more rows at once."""
        if self._n + rows > self.capacity:
            self._resize(self._n + rows)

    def add(self, rows: list[tuple[int, bytes, float]]) -> None:
        """Append ``(row id, packed vector, expires_s)`` rows; vectors of another length are not indexed."""
        if rows:
            self.last_id = max(self.last_id, max(row_id for row_id, _, _ in rows))
        fitting = [row for row in rows if len(row[1]) == 4 * self.dims]
        if not fitting:
            return
        end = self._n + len(fitting)
        if end > self.capacity:
            self._resize(max(end, self.capacity + self.capacity // 2 + 16))
        self._ids[self._n : end] = [row_id for row_id, _, _ in fitting]
        self._expires[self._n : end] = [expires_s for _, _, expires_s in fitting]
        packed = b"".join(raw for _, raw, _ in fitting)
        self._matrix[self._n : end] = np.frombuffer(packed, dtype="<f4").reshape(len(fitting), self.dims)
        self._n = end

    def remove(self, row_ids: Iterable[int]) -> None:
        """Forget these rows (evicted, replaced or deleted by the store)."""
        wanted = np.fromiter(row_ids, dtype=np.int64)
        if len(wanted):
            self._kill(np.isin(self._ids[: self._n], wanted))

    def retain(self, row_ids: Iterable[int]) -> None:
        """Forget every row not in ``row_ids`` (what the store still holds)."""
        kept = np.fromiter(row_ids, dtype=np.int64)
        self._kill(~np.isin(self._ids[: self._n], kept))

    def best(self, vector: tuple[float, ...], now_s: float) -> tuple[int, float] | None:
        """(row id, cosine similarity) of the unexpired row nearest to the unit ``vector``."""
        if len(vector) != self.dims:
            return None
        self._kill(self._expires[: self._n] <= now_s)
        if not len(self):
            return None
        scores = self._matrix[: self._n] @ np.asarray(vector, dtype=np.float32)
        scores[self._expires[: self._n] <= now_s] = -np.inf  # dead rows carry expiry 0 (see _kill)
        i = int(np.argmax(scores))
        return int(self._ids[i]), float(scores[i])

    def _kill(self, mask: np.ndarray[Any, np.dtype[np.bool_]]) -> None:
        mask &= self._expires[: self._n] > 0  # rows killed before are not counted twice
        killed = int(mask.sum())
        if not killed:
            return
        self._expires[: self._n][mask] = 0.0
        self._dead += killed
        if self._dead * 4 >= self._n:
            self._compact()

    def _compact(self) -> None:
        live = self._expires[: self._n] > 0
        n = int(live.sum())
        self._ids[:n] = self._ids[: self._n][live]
        self._expires[:n] = self._expires[: self._n][live]
        self._matrix[:n] = self._matrix[: self._n][live]
        self._n, self._dead = n, 0
        if self.capacity > 2 * n + 64:
            self._resize(n + n // 2 + 16)  # give memory back once the bucket has shrunk

    def _resize(self, capacity: int) -> None:
        ids = np.empty(capacity, dtype=np.int64)
        expires = np.empty(capacity, dtype=np.float64)
        matrix = np.empty((capacity, self.dims), dtype=np.float32)
        ids[: self._n] = self._ids[: self._n]
        expires[: self._n] = self._expires[: self._n]
        matrix[: self._n] = self._matrix[: self._n]
        self._ids, self._expires, self._matrix = ids, expires, matrix
