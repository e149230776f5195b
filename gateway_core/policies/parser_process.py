"""Large request bodies are parsed in a child process, so the event loop goes on serving while they are.

No JSON parser releases the GIL: ``orjson.loads`` of 16 MiB holds it for 25-90 ms, and the byte counts of the
element caps (``json_body.parse_object``) for about as long again, so a thread would stall the loop just the
same. A body of at least ``LARGE_BODY_BYTES``, or one whose shape needs an exact count, goes over a socket pair to
a child that runs the very same ``parse_object`` and sends back the object, or the 400's message and code,
pickled: unpickling a 16 MiB string costs the loop ~3 ms, and the exact caps of ``json_body`` bound what any
accepted body costs to unpickle (~25 ms at most). The child (Python and orjson, ~20 MB idle) is started on the
first such body, one per gateway worker, and exits when its socket closes. If it cannot be started (``EMFILE``
when descriptors run short, ``ENOMEM``), a start is tried again after a back-off (1 s, doubling to 60 s); until then,
or if it dies mid-parse, a body that is cheap to parse (the ``BUSY_INLINE_BYTES`` rule) is parsed on the loop and
any other gets a 503 with ``retry-after``: parsing those on the loop costs it up to ~0.5 s each. It holds no
descriptor but its socket: it is started with ``subprocess.Popen`` (in a thread), which closes the others; uvloop's
subprocess spawn ignores ``close_fds`` for inheritable ones, and handed the child the worker's listening socket and
its supervisor's pipes.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import os
import pickle
import signal
import socket
import struct
import subprocess
import sys
from pathlib import Path
from typing import Any

from ..clock import Clock, SystemClock
from ..errors import BadRequest, ServiceUnavailable
from .json_body import parse_object, within_exact_caps

LARGE_BODY_BYTES = 1024 * 1024
# While the child is busy (one body at a time) or cannot be started, a body this small that the byte counts show
# under the exact caps is parsed on the loop instead (up to ~30 ms of its CPU for a dense body near 2 MiB), so it
# does not queue behind others' large bodies.
BUSY_INLINE_BYTES = 2 * 1024 * 1024
_HEAD = struct.Struct("!Q")  # each message is its length, then its bytes
_SOCKET_BUFFER_BYTES = 1024 * 1024  # fewer wake-ups of the loop per body than the default ~200 KiB
_CHILD_NICENESS = 10  # on a busy machine the event loop, not the parse, gets the CPU first
# After a failed start, none is tried for this long, doubled after each further failure up to the most.
_RETRY_FIRST_S = 1.0
_RETRY_MOST_S = 60.0
_ROOT = str(Path(__file__).resolve().parents[2])  # holds gateway_core, whatever the host's working directory
log = logging.getLogger("aigw")


class ParserProcess:
    """``parse`` is ``parse_object`` run in the child; one body at a time, in arrival order (but for cheap ones
    while it is busy, parsed on the loop: ``BUSY_INLINE_BYTES``)."""

    def __init__(self, clock: Clock | None = None) -> None:
        self._child: subprocess.Popen[bytes] | None = None
        self._socket: socket.socket | None = None
        self._lock: asyncio.Lock | None = None
        self._clock = clock or SystemClock()
        self._retry_at = 0.0  # monotonic: a start failed, the next is not tried before this
        self._retry_s = _RETRY_FIRST_S  # the back-off after the next failed start

    @property
    def pid(self) -> int | None:
        """The child's process id while it runs."""
        return self._child.pid if self._child is not None and self._child.poll() is None else None

    async def parse(self, raw: bytes) -> dict[str, Any]:
        waiting = self._clock.monotonic_s() < self._retry_at
        if (self.busy or waiting) and _cheap(raw):
            return parse_object(raw)
        if waiting:
            raise self._unavailable()
        exchange = asyncio.ensure_future(self._exchange(raw))
        try:
            reply = await asyncio.shield(exchange)
        except asyncio.CancelledError:
            # The client left: the child still answers, so the socket stays in step; that answer is dropped.
            exchange.add_done_callback(_drop)
            raise
        if reply is None:  # the child could not start, or died: a cheap body is parsed on the loop
            if _cheap(raw):
                return parse_object(raw)
            raise self._unavailable()
        return _result(reply)

    def _unavailable(self) -> ServiceUnavailable:
        wait_s = max(1, math.ceil(self._retry_at - self._clock.monotonic_s()))
        return ServiceUnavailable(
            f"This gateway cannot parse large request bodies right now; retry in {wait_s} s.",
            headers={"retry-after": str(wait_s)},
        )

    @property
    def busy(self) -> bool:
        """Whether the child is parsing a body (others wait for it)."""
        return self._lock is not None and self._lock.locked()

    async def close(self) -> None:
        child, sock = self._child, self._socket
        self._child = self._socket = None
        if sock is not None:
            sock.close()  # the child exits when it reads the end of its input
        if child is None or child.poll() is not None:
            return
        try:
            await asyncio.to_thread(child.wait, 5)
        except subprocess.TimeoutExpired:
            child.kill()
            await asyncio.to_thread(child.wait)

    async def _exchange(self, raw: bytes) -> bytearray | None:
        if self._lock is None:
            self._lock = asyncio.Lock()
        async with self._lock:
            sock = await self._running()
            if sock is None:
                return None
            loop = asyncio.get_running_loop()
            try:
                await loop.sock_sendall(sock, _HEAD.pack(len(raw)))
                await loop.sock_sendall(sock, raw)
                (size,) = _HEAD.unpack(await _receive(loop, sock, _HEAD.size))
                return await _receive(loop, sock, size)
            except (OSError, EOFError) as exc:
                log.warning("the parser process failed (%r); this body is parsed on the event loop", exc)
                await self.close()
                return None

    async def _running(self) -> socket.socket | None:
        if self._child is not None and self._child.poll() is None and self._socket is not None:
            return self._socket
        await self.close()
        if self._clock.monotonic_s() < self._retry_at:
            return None  # (a body that queued behind the failed start)
        try:
            self._child, self._socket = await _start()
        except OSError as exc:
            log.warning(
                "the parser process cannot start (%r); large bodies get 503 for %g s, then a start is tried again",
                exc,
                self._retry_s,
            )
            self._retry_at = self._clock.monotonic_s() + self._retry_s
            self._retry_s = min(2 * self._retry_s, _RETRY_MOST_S)
            return None
        self._retry_s = _RETRY_FIRST_S
        return self._socket


async def _start() -> tuple[subprocess.Popen[bytes], socket.socket]:
    """The child and the gateway's end of its socket pair (``OSError`` if either cannot be had)."""
    path = os.pathsep.join(p for p in (_ROOT, os.environ.get("PYTHONPATH")) if p)
    # glibc would otherwise keep each freed 16 MiB buffer in the heap, and the child's RSS with it.
    env = {**os.environ, "PYTHONPATH": path, "MALLOC_MMAP_THRESHOLD_": str(128 * 1024)}
    ours, theirs = socket.socketpair()
    try:
        for sock in (ours, theirs):
            for option in (socket.SO_SNDBUF, socket.SO_RCVBUF):
                sock.setsockopt(socket.SOL_SOCKET, option, _SOCKET_BUFFER_BYTES)
        ours.setblocking(False)
        child = await asyncio.to_thread(
            subprocess.Popen,
            [sys.executable, "-m", __name__, str(theirs.fileno())],
            close_fds=True,
            pass_fds=(theirs.fileno(),),
            env=env,
        )
    except BaseException:
        ours.close()
        raise
    finally:
        theirs.close()
    return child, ours


def _cheap(raw: bytes) -> bool:
    """Parsed on the loop when the child is busy or away: its byte counts show it under the exact caps, and it is
    small enough (up to ~30 ms of the loop's CPU)."""
    return len(raw) < BUSY_INLINE_BYTES and within_exact_caps(raw)


async def _receive(loop: asyncio.AbstractEventLoop, sock: socket.socket, size: int) -> bytearray:
    """Exactly ``size`` bytes, read straight into one buffer (no copies of a growing one)."""
    buffer = bytearray(size)
    view = memoryview(buffer)
    received = 0
    while received < size:
        n = await loop.sock_recv_into(sock, view[received:])
        if n == 0:
            raise EOFError("the parser process closed its socket")
        received += n
    return buffer


def _result(data: bytearray) -> dict[str, Any]:
    # Only the child below wrote these bytes, pickling what orjson parsed: dicts, lists, strings and numbers.
    reply = pickle.loads(data)
    if reply[0] == "error":
        _, message, code, param = reply
        raise BadRequest(message, code=code, param=param)
    body: dict[str, Any] = reply[1]
    return body


def _drop(exchange: asyncio.Future[bytearray | None]) -> None:
    if not exchange.cancelled():
        exchange.exception()  # retrieved, so asyncio does not log it as never retrieved


def main() -> None:
    """The child: read a body, answer its parse, until the gateway closes the socket (argv[1] is its fd)."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C stops the gateway, whose exit closes the socket
    with contextlib.suppress(OSError):
        os.nice(_CHILD_NICENESS)
    sock = socket.socket(fileno=int(sys.argv[1]))
    while True:
        head = _read(sock, _HEAD.size)
        if head is None:
            return
        raw = _read(sock, _HEAD.unpack(head)[0])
        if raw is None:
            return
        try:
            reply: tuple[Any, ...] = ("ok", parse_object(raw))
        except BadRequest as exc:
            reply = ("error", exc.message, exc.code, exc.param)
        data = pickle.dumps(reply, protocol=pickle.HIGHEST_PROTOCOL)
        sock.sendall(_HEAD.pack(len(data)))
        sock.sendall(data)
        del raw, reply, data  # not kept while waiting for the next body: the child idles at ~20 MB


def _read(sock: socket.socket, size: int) -> bytearray | None:
    """Exactly ``size`` bytes; None at the end of the input (the gateway is gone)."""
    buffer = bytearray(size)
    view = memoryview(buffer)
    received = 0
    while received < size:
        n = sock.recv_into(view[received:])
        if n == 0:
            return None
        received += n
    return buffer


if __name__ == "__main__":
    main()
