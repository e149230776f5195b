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

The random bits are read from the OS 4,000 bytes (400 ids) at a time, not 10 per id: a getrandom syscall per
id was 6-9% of the event loop's samples under load (bench/README.md, "Less work on the loop"). Each id still
gets its own 80 bits, never shared: the unread ones sit in a list whose ``pop()`` is atomic (two threads never
take the same), and a forked child empties its copy before it makes an id (it would otherwise hand out its
parent's next ones).
"""

from __future__ import annotations

import os
import time

_BLOCK_BYTES = 4_000  # 400 ids per syscall
_RANDOM_BYTES = 10

# The process's unread random parts, 20 hex characters each: process state, like the OS's own random source.
_unread: list[str] = []
os.register_at_fork(after_in_child=_unread.clear)


def _refill() -> str:
    """A random part when none is left unread: read a new block (other threads may take it first: then another)."""
    while True:
        block = os.urandom(_BLOCK_BYTES).hex()
        width = 2 * _RANDOM_BYTES
        _unread.extend([block[i : i + width] for i in range(0, len(block), width)])
        try:
            return _unread.pop()
        except IndexError:
            continue


def new_id() -> str:
    """A new id, unique across processes, restarts, forks and threads: 32 hex characters, ordered by the
    millisecond it was made in (random within one)."""
    try:
        random_part = _unread.pop()
    except IndexError:
        random_part = _refill()
    return (time.time_ns() // 1_000_000 & 0xFFFF_FFFF_FFFF).to_bytes(6, "big").hex() + random_part
