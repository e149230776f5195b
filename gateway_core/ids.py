"""Unique ids (request ids, usage record and batch ids): 32 lowercase hex characters, the shape of
``uuid4().hex``.

Laid out as UUIDv7 is: the time in milliseconds (12 hex digits), then 80 bits from the OS's random source. The
usage store keys and indexes records by these ids: ids that grow with time land at the end of its b-trees
instead of at random pages, which cut the SQLite store's write cost per record from ~90-120 to ~35-50 us
(bench/README.md, "Usage recording made cheap"). Record and batch ids are idempotence keys, so uniqueness is
what matters: 80 random bits per millisecond need no per-process state and hold across processes, restarts
and forks. An id says when it was made (as its record does) but nothing about how many requests came before it
(a prefix and a counter, tried first, let any client read a worker's request volume from the difference
between two of its own request ids).
"""

from __future__ import annotations

import os
import time


def new_id() -> str:
    """A new id, unique across processes, restarts, forks and threads: 32 hex characters, ordered by the
    millisecond it was made in (random within one)."""
    return (time.time_ns() // 1_000_000 & 0xFFFF_FFFF_FFFF).to_bytes(6, "big").hex() + os.urandom(10).hex()
