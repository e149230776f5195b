"""Reading a request body without ever holding more than the configured limit (shared by both hosts)."""

from __future__ import annotations

from collections.abc import AsyncIterator


async def read_limited(chunks: AsyncIterator[bytes], content_length: str, limit: int) -> tuple[bytes, int]:
    """(body, size). Past ``limit`` bytes reading stops and the body is empty: the size tells the pipeline
    to answer 413, so a client cannot make the gateway buffer an arbitrarily large upload."""
    if content_length.isdigit() and int(content_length) > limit:
        return b"", int(content_length)
    parts: list[bytes] = []
    size = 0
    async for chunk in chunks:
        size += len(chunk)
        if size > limit:
            return b"", size
        parts.append(chunk)
    return (parts[0] if len(parts) == 1 else b"".join(parts)), size


class BodyDeadline:
    """When a request body must have arrived, as Apache's mod_reqtimeout sets it (``body=20,MinRate=500``).

    An inactivity timeout alone let a client send one byte every ``timeout_s - 1`` seconds and hold its
    connection for as long as it liked. Here the body must also be complete by a deadline that starts at
    ``timeout_s`` after the head and moves on 1 s for every ``min_rate`` bytes received: a client that keeps
    its connection must keep sending at least ``min_rate`` bytes a second on average.
    """

    def __init__(self, timeout_s: float, min_rate: int, now_s: float) -> None:
        self._timeout_s = timeout_s
        self._min_rate = min_rate
        self._started_s = now_s
        self._received = 0
        self._deadline_s = now_s + timeout_s

    def received(self, size: int) -> None:
        self._received += size
        self._deadline_s = self._started_s + self._timeout_s + self._received / self._min_rate

    def wait_s(self, now_s: float) -> float:
        """How long to wait for the next piece (the inactivity timeout or the deadline, whichever is first);
        zero or less: too late."""
        return min(self._timeout_s, self._deadline_s - now_s)

    def message(self, now_s: float) -> str:
        """Why the body timed out, for the 408 (``now_s``: when it did)."""
        if self._deadline_s - now_s > 0.001:  # the inactivity timeout ended it before the deadline
            return f"The request body stalled: nothing arrived for {self._timeout_s:g} s."
        return (
            f"The request body arrived too slowly: {self._received} bytes in {now_s - self._started_s:.0f} s "
            f"(a body must arrive at {self._min_rate} bytes/s on average, after the first {self._timeout_s:g} s)."
        )
