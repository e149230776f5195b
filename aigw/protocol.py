"""uvicorn's httptools protocol with a deadline for the request head.

uvicorn closes idle keep-alive connections (``timeout_keep_alive``) but has no limit on how long a client may
take to send a request head, so a client that connects and sends nothing, or a few header bytes now and then,
holds a descriptor (and a slot in the kernel's accept queue) forever. Here a timer starts when the connection
opens or the next request's first byte arrives, and the connection is closed unless the whole head arrived
within ``header_timeout_s``. The body has its own timeout, in the ASGI adapter (it can answer 408 there).

The head's size is capped too (``max_head_bytes``, ``max_target_bytes``): httptools and uvicorn join a header
value or URL that arrives in many pieces by concatenation, so a client sending an endless head would make each
new piece cost more than the last, on the event loop. Head bytes are counted as they arrive; past a cap the
client gets 431 (or 414 for the request target), ``connection: close``, and the connection is shut. The number of
header fields is capped as well (``MAX_HEADER_FIELDS``): each costs a parser callback and a tuple here and a step
in the ASGI adapter, and a 64 KiB head holds 13,000 empty ones.

These refusals, and uvicorn's own 400 for a head it cannot parse (Content-Length with Transfer-Encoding, a repeated
or out-of-range Content-Length), answer like the gateway's other errors: an OpenAI-shaped JSON body, a fresh
``x-request-id`` (from ``gateway_core.ids.new_id``, like every other; the head's own is not trusted) and
``x-aigw-attempts: 0``.

A chunked body's trailer section (after the ``0`` chunk) is parsed like a head, by the same concatenation, but
after ``on_headers_complete``: bytes that arrive after the head without moving the body on (no body bytes) are
counted against ``max_head_bytes``. Each chunk costs parser callbacks, so past 1024 chunks a body must average
64 bytes a chunk. Past either bound the connection is closed (the answer to that request may already be out, so
none is written). Their time is bounded by the body timeout: the adapter reads the whole body, trailers
included, before it answers.

Writes have a deadline too (``write_timeout_s``): a client that stops reading an answer (a stream above all)
left the relay blocked in ``send()`` while the transport was paused, holding the socket and the upstream
connection for good. Once the transport's buffer is over its high-water mark (paused), or the connection is
closing with output still unsent, the client has ``write_timeout_s`` to take it (drain below the low-water
mark); else the connection is aborted. uvicorn then reports a disconnect: the relay stops, and closing the
stream closes the upstream connection and writes the usage record.

Connections over a cap (``ConnectionCaps``, aigw/connections.py) are aborted as they are accepted.

An answer with a ``content-length`` (up to 64 KiB) goes out in one transport write: uvicorn writes the head on
``http.response.start`` and the body on ``http.response.body``, two ``send()`` syscalls and two TCP segments per
answer. Each request's cycle writes through ``_OneWrite``, which holds that head until the body joins it.
"""

from __future__ import annotations

import asyncio
import json
import logging
from typing import Any

import uvicorn
from uvicorn._types import ASGI3Application
from uvicorn.protocols.http.httptools_impl import STATUS_LINE, HttpToolsProtocol, RequestResponseCycle

from gateway_core.ids import new_id

from .connections import ConnectionCaps

log = logging.getLogger("aigw")
# After refusing a head, its remaining bytes are read and dropped this long, so the answer is not lost to a reset
# (closing a socket with unread data sends RST), then the connection is closed.
_LINGER_S = 1.0
# A chunked body may have this many chunks, and one more for each _MIN_AVERAGE_CHUNK bytes of it.
_FREE_CHUNKS = 1024
_MIN_AVERAGE_CHUNK = 64
# Header fields per request (trailers included): Apache's LimitRequestFields and Tomcat's maxHeaderCount default
# to 100 too. SDKs and browsers send 10-30, proxies add a few; 13,000 empty ones fit in the head-size cap.
MAX_HEADER_FIELDS = 100


class _Refused(Exception):
    """Raised in a parser callback to stop parsing a head already answered (uvicorn's 400 is then skipped)."""


class GatewayServerConfig(uvicorn.Config):
    """uvicorn's config plus what the protocol reads. It is pickled to each worker process, which imports this
    module to unpickle it before it starts answering the supervisor's health pings: keep the imports light."""

    def __init__(
        self,
        app: Any,
        *,
        header_timeout_s: float,
        max_head_bytes: int,
        max_target_bytes: int,
        write_timeout_s: float = 30.0,
        caps: ConnectionCaps | None = None,
        **kwargs: Any,
    ) -> None:
        super().__init__(app, **kwargs)
        self.header_timeout_s = header_timeout_s
        self.max_head_bytes = max_head_bytes
        self.max_target_bytes = max_target_bytes
        self.write_timeout_s = write_timeout_s
        self.caps = caps  # each worker unpickles its own, with nothing counted


class HeadTimeoutProtocol(HttpToolsProtocol):
    def __init__(self, config: Any, *args: Any, **kwargs: Any) -> None:
        super().__init__(config, *args, **kwargs)
        self._head_timeout_s: float = getattr(config, "header_timeout_s", 10.0)
        self._head_timer: asyncio.TimerHandle | None = None
        self._max_head: int = getattr(config, "max_head_bytes", 64 * 1024)
        self._max_target: int = getattr(config, "max_target_bytes", 8 * 1024)
        self._in_head = True  # the next bytes belong to a request head
        self._head_bytes = 0
        self._refused = False
        self._stalled_bytes = 0  # after the head: bytes since the body last moved on (trailers, chunk extensions)
        self._chunks = 0  # this message's chunks
        self._payload_bytes = 0  # this message's body bytes
        self._body_pieces: list[bytes] = []  # this read's body pieces, handed to uvicorn as one
        self._read_body_bytes = 0
        self._fields = 0  # this message's header fields (and trailers)
        self._write_timeout_s: float = getattr(config, "write_timeout_s", 30.0)
        self._write_timer: asyncio.TimerHandle | None = None
        self._caps: ConnectionCaps | None = getattr(config, "caps", None)
        self._peer: str | None = None  # set once admitted under the caps (released when the connection ends)
        self._accepted = False  # False: refused over a cap, never handed to uvicorn

    def data_received(self, data: bytes) -> None:
        if self._refused:
            return  # the rest of a refused head: dropped unparsed
        in_body = not self._in_head
        if self._in_head:
            self._head_bytes += len(data)
        self._read_body_bytes = 0
        super().data_received(data)
        self._hand_over_body()
        if self._refused or self.transport.is_closing():
            return
        if self._in_head:
            self._refuse_if_too_large(len(getattr(self, "url", b"")), self._head_bytes)
        elif in_body:  # (a read that held the end of the head is not counted: at most one read's worth)
            self._stalled_bytes = 0 if self._read_body_bytes else self._stalled_bytes + len(data)
            if self._stalled_bytes > self._max_head:  # trailers, joined like a head's values
                self._close_mid_body()

    def on_header(self, name: bytes, value: bytes) -> None:
        self._fields += 1
        if self._fields > MAX_HEADER_FIELDS:
            if self._in_head:
                self._refuse(
                    431,
                    "request_header_fields_too_large",
                    f"The request has more than {MAX_HEADER_FIELDS} header fields.",
                )
            elif not self._refused:
                self._close_mid_body()  # trailers: the answer may be out already
            raise _Refused  # the parser stops here, not after the rest of this read
        super().on_header(name, value)

    def send_400_response(self, msg: str) -> None:
        # uvicorn's answer to a request httptools cannot parse (or to a callback that raised, after our answer).
        if self._refused:
            return
        message = (
            "The request is not valid HTTP/1.1 (for example Content-Length with Transfer-Encoding, a Content-Length "
            "repeated or out of range, or a malformed chunk)."
        )
        if self._in_head:
            self._refuse(400, "invalid_http_request", message)
            return
        # A body that cannot be parsed (a malformed chunk): the app is running, so, as uvicorn did, the answer
        # unless one has started, then the connection is closed at once (no half-close it could write into).
        self._refused = True
        self._disarm()
        cycle = getattr(self, "cycle", None)
        if cycle is not None and not cycle.response_started:
            self.transport.write(_error(400, "invalid_http_request", message))
        self.transport.close()

    def on_chunk_header(self) -> None:
        # Each chunk costs parser callbacks on the event loop: past the first ones, a body must average at least
        # _MIN_AVERAGE_CHUNK bytes a chunk (a body of 1-byte chunks stalled every request on the worker).
        self._chunks += 1
        if self._chunks > _FREE_CHUNKS + self._payload_bytes // _MIN_AVERAGE_CHUNK and not self._refused:
            self._close_mid_body()

    def _close_mid_body(self) -> None:
        # The answer may be out already: nothing can be written for this request, so the connection ends.
        self._refused = True
        self._disarm()
        self.transport.close()
        self._bound_unsent_output()

    def on_message_complete(self) -> None:
        if self._refused:
            return
        self._hand_over_body()
        super().on_message_complete()
        self._stalled_bytes = self._chunks = self._payload_bytes = self._fields = 0
        self._in_head = True
        self._head_bytes = 0

    def on_body(self, body: bytes) -> None:
        # Called once per chunk: a body of 1-byte chunks makes tens of thousands of calls per read, so each only
        # collects; uvicorn gets the read's body in one piece (one event, one wake-up of the reader).
        self._read_body_bytes += len(body)
        self._payload_bytes += len(body)
        self._body_pieces.append(body)

    def _hand_over_body(self) -> None:
        if self._body_pieces:
            body = b"".join(self._body_pieces)
            self._body_pieces.clear()
            if not self._refused and not self.transport.is_closing():
                super().on_body(body)

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        if self._caps is not None:
            peername = transport.get_extra_info("peername")
            peer = str(peername[0]) if peername else ""
            if not self._caps.admit(peer):
                self._refused = True
                transport.abort()  # uvicorn never sees it: connection_lost below skips uvicorn's bookkeeping
                return
            self._peer = peer
        self._accepted = True
        super().connection_made(transport)
        self._arm()

    def connection_lost(self, exc: Exception | None) -> None:
        if not self._accepted:
            return
        self._disarm()
        self._stop_write_timer()
        if self._caps is not None and self._peer is not None:
            self._caps.release(self._peer)
            self._peer = None
        super().connection_lost(exc)

    def pause_writing(self) -> None:
        super().pause_writing()
        self._start_write_timer()

    def resume_writing(self) -> None:
        super().resume_writing()
        self._stop_write_timer()

    def on_response_complete(self) -> None:
        super().on_response_complete()
        self._bound_unsent_output()

    def timeout_keep_alive_handler(self) -> None:
        super().timeout_keep_alive_handler()
        self._bound_unsent_output()

    def _bound_unsent_output(self) -> None:
        # A closing transport waits for its unsent output however long the client takes to read it.
        if self.transport.is_closing() and self.transport.get_write_buffer_size() > 0:
            self._start_write_timer()

    def _start_write_timer(self) -> None:
        if self._write_timer is None:
            self._write_timer = self.loop.call_later(self._write_timeout_s, self._write_expired)

    def _stop_write_timer(self) -> None:
        if self._write_timer is not None:
            self._write_timer.cancel()
            self._write_timer = None

    def _write_expired(self) -> None:
        self._write_timer = None
        unsent = self.transport.get_write_buffer_size()
        log.info(
            "closed a connection from %s: %d bytes unread for %g s (server.write_timeout_s)",
            self._peer or "?",
            unsent,
            self._write_timeout_s,
        )
        self.transport.abort()  # close() would wait for the unsent output; connection_lost tells the app

    def _start_asgi_task(self, cycle: RequestResponseCycle, app: ASGI3Application) -> None:
        cycle.transport = _OneWrite(cycle)
        super()._start_asgi_task(cycle, app)

    def on_message_begin(self) -> None:
        super().on_message_begin()
        if self._head_timer is None:  # armed since the connection opened: the first head has the rest of it
            self._arm()

    def on_headers_complete(self) -> None:
        self._disarm()
        self._head_bytes = 0
        # A head that arrived in one piece is measured here (names, values, separators).
        size = len(self.url) + sum(len(name) + len(value) + 4 for name, value in self.headers)
        if not self._refuse_if_too_large(len(self.url), size):
            # Still in the head while uvicorn parses the target: a target it refuses (``http://a:99999/``,
            # ``CONNECT x:443``) reaches send_400_response, which answers a head's refusal, not a body's.
            super().on_headers_complete()
        self._in_head = False

    def _refuse_if_too_large(self, target_bytes: int, head_bytes: int) -> bool:
        if target_bytes > self._max_target:
            self._refuse(414, "uri_too_long", f"The request target is longer than {self._max_target} bytes.")
        elif head_bytes > self._max_head:
            self._refuse(
                431, "request_header_fields_too_large", f"The request head is larger than {self._max_head} bytes."
            )
        else:
            return False
        return True

    def _refuse(self, status: int, code: str, message: str) -> None:
        self._refused = True
        previous = getattr(self, "cycle", None)
        if previous is not None and not previous.response_complete:
            self.transport.close()  # a pipelined head while the previous answer is going out: no room for ours
            return
        self.transport.write(_error(status, code, message))
        if self.transport.can_write_eof():
            self.transport.write_eof()
        self._disarm()
        self._head_timer = self.loop.call_later(_LINGER_S, self._head_expired)

    def _arm(self) -> None:
        self._head_timer = self.loop.call_later(self._head_timeout_s, self._head_expired)

    def _disarm(self) -> None:
        if self._head_timer is not None:
            self._head_timer.cancel()
            self._head_timer = None

    def _head_expired(self) -> None:
        self._head_timer = None
        if not self.transport.is_closing():
            self.transport.close()
            self._bound_unsent_output()  # a refusal (431, 414) its client does not read


# Bodies up to this size are joined with their head; a larger one follows the head in its own write: the join
# copies the body, and one more syscall is nothing beside the copy of a large answer.
_JOIN_MAX_BODY = 64 * 1024


class _OneWrite(asyncio.Transport):
    """The transport as one request's cycle sees it: the head of an answer with a ``content-length`` is held
    and written with the body (uvicorn writes the body right after it, or closes the transport)."""

    def __init__(self, cycle: RequestResponseCycle) -> None:
        super().__init__()
        self._cycle = cycle
        self._transport = cycle.transport
        self._head_seen = False  # the cycle's first write once its response started is the head
        self._held: bytes | None = None

    def write(self, data: bytes | bytearray | memoryview) -> None:
        held = self._held
        if held is not None:
            self._held = None
            if len(data) <= _JOIN_MAX_BODY:
                self._transport.write(held + data)
            else:  # joining would copy a large answer once more on the loop (~75 ms per 60 MiB here)
                self._transport.write(held)
                self._transport.write(data)
            return
        cycle = self._cycle
        if not self._head_seen and cycle.response_started:
            self._head_seen = True
            # content-length given and a body write to come (none for HEAD: uvicorn writes no body then)
            if cycle.chunked_encoding is False and cycle.scope["method"] != "HEAD":
                self._held = bytes(data)
                return
        self._transport.write(data)

    def close(self) -> None:
        if self._held is not None:  # the body never came (the app failed): the head goes, as it did
            self._transport.write(self._held)
            self._held = None
        self._transport.close()

    def is_closing(self) -> bool:
        return self._transport.is_closing()

    def get_extra_info(self, name: str, default: Any = None) -> Any:
        return self._transport.get_extra_info(name, default)


def _error(status: int, code: str, message: str) -> bytes:
    """A whole ``connection: close`` response with the gateway's error body and headers."""
    error = {"error": {"message": message, "type": "invalid_request_error", "param": None, "code": code}}
    body = json.dumps(error).encode()
    head = [
        STATUS_LINE[status],
        b"content-type: application/json\r\n",
        b"content-length: " + str(len(body)).encode() + b"\r\n",
        b"x-request-id: " + new_id().encode() + b"\r\n",
        b"x-aigw-attempts: 0\r\n",  # no backend was tried, as for the gateway's other refusals
        b"connection: close\r\n\r\n",
    ]
    return b"".join(head) + body
