"""Caps on open connections, per peer address and in all, for one worker process of `aigw serve`.

Each open connection costs a descriptor (two while it waits on a backend), and a process has a fixed number:
past it, accept() fails and every client is locked out, `/healthz` included. A client that opens thousands of
connections must be stopped well before that, and before it takes the room other clients need. A connection
over a cap is refused as it is accepted (reset, no answer written). Measured against an OpenAI-shaped 503
written at accept (3,000 refused connections, one peer, a loaded 2-core box): the reset cost the worker 0.10 ms
of CPU a connection and held no descriptor; the 503 cost 0.20 ms, and since it must linger so as not to be lost
to a reset, a flood of 3,000 held up to 950 descriptors at once, which is what the caps are there to prevent.
"""

from __future__ import annotations

import logging
import resource
import time
from collections.abc import Sequence

from .client_address import Network, _is_trusted

log = logging.getLogger("aigw")
# Descriptors kept for what is not a client connection: listening sockets, stores, logs, the parser child.
_RESERVED_FDS = 100
_NO_LIMIT_FDS = 1 << 20  # what an unlimited RLIMIT_NOFILE counts as
_LOG_EVERY_S = 60.0


def default_max_connections() -> int:
    """Half of the descriptors the process may open, less a reserve: a connection waiting on a backend holds a
    second one for the upstream connection."""
    soft, _ = resource.getrlimit(resource.RLIMIT_NOFILE)
    fds = _NO_LIMIT_FDS if soft == resource.RLIM_INFINITY else soft
    return max(1, (fds - _RESERVED_FDS) // 2)


class ConnectionCaps:
    """Counts this process's open connections by peer address; ``admit`` says whether one more may open."""

    def __init__(self, *, per_peer: int, total: int, trusted: Sequence[Network] = ()) -> None:
        self.per_peer = per_peer
        self.total = total
        self._trusted = tuple(trusted)
        self._open: dict[str, int] = {}
        self._count = 0
        self._refused = 0  # since the last warning
        self._warned_s = 0.0

    def admit(self, peer: str) -> bool:
        """Count a new connection from ``peer``, or return False (not counted) if it is over a cap.
        A trusted proxy's connections are not capped per peer: they carry every client behind it."""
        if self._count >= self.total:
            return self._refuse(peer, f"{self._count} connections are open (server.max_connections)")
        held = self._open.get(peer, 0)
        if held >= self.per_peer and not (self._trusted and _is_trusted(peer, self._trusted)):
            return self._refuse(peer, f"it has {held} open (server.max_connections_per_peer)")
        self._open[peer] = held + 1
        self._count += 1
        return True

    def release(self, peer: str) -> None:
        """A connection ``admit`` counted has closed."""
        held = self._open.pop(peer, 0) - 1
        if held > 0:
            self._open[peer] = held
        self._count -= 1

    def _refuse(self, peer: str, why: str) -> bool:
        # A flood refuses thousands a second: one warning a minute, with the count.
        self._refused += 1
        now = time.monotonic()
        if now - self._warned_s >= _LOG_EVERY_S:
            log.warning(
                "refused %d connection(s) since the last such warning; latest from %s: %s", self._refused, peer, why
            )
            self._warned_s = now
            self._refused = 0
        return False
