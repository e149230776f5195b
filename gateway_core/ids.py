"""Unique ids (request ids, usage record and batch ids): 32 lowercase hex characters, as ``uuid4().hex``.

uuid4 reads 16 random bytes from the OS for each id; it was ~4% of the event loop's time per request. Here a
process draws 80 random bits once (its prefix) and counts the remaining 48: ids stay unique across processes
and restarts as long as their prefixes differ, which with 80 random bits they do (a collision among a million
processes has odds of ~4e-13). Uniqueness is what matters: record and batch ids are idempotence keys. The ids
are not secrets (a client may choose its own request id) and need not be unguessable.

The state is per process by design (like the OS's random source): a forked child draws a new prefix, so parent
and child never hand out the same id.
"""

from __future__ import annotations

import itertools
import os
import threading

_PREFIX_BYTES = 10  # 80 random bits
_COUNTER_LIMIT = 1 << 48  # the other 12 hex characters; a new prefix is drawn if a process ever gets there


class IdSource:
    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.reset()

    def reset(self) -> None:
        """A new random prefix and counter (at start, in a forked child, when the counter runs out)."""
        # One attribute, read at once: a thread never pairs one prefix with another prefix's counter.
        self._state = (os.urandom(_PREFIX_BYTES).hex(), itertools.count())

    def new(self) -> str:
        # next() on itertools.count is atomic under the GIL: threads (the stores') may call this too.
        state = self._state
        n = next(state[1])
        if n >= _COUNTER_LIMIT:
            with self._lock:
                if self._state is state:
                    self.reset()
            return self.new()
        return f"{state[0]}{n:012x}"


_SOURCE = IdSource()
os.register_at_fork(after_in_child=_SOURCE.reset)


def new_id() -> str:
    """A new id, unique across processes, restarts and threads: 32 hex characters."""
    return _SOURCE.new()
