"""`SimReply`, what the simulator answers, and the one function that sends it.

Every path builds a `SimReply` (status, headers, body or SSE stream, time to first byte, whether to drop the
connection halfway) and `send_reply` turns it into ASGI messages, so the decisions stay readable and testable
apart from the bytes.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import orjson

from .asgi import Dropped, Send, Watch
from .sse import SseStream, play

Headers = tuple[tuple[str, str], ...]


@dataclass(frozen=True, slots=True)
class SimReply:
    """One answer: sent after ``delay_s``; a plain ``body`` unless ``stream`` is set.

    ``drop``: the connection breaks halfway through (half the body, or half the stream's pieces) and the
    server aborts it, as a crashed backend would.
    """

    status: int
    body: bytes = b""
    headers: Headers = ()  # after content-type
    content_type: str = "application/json"
    delay_s: float = 0.0
    stream: SseStream | None = None
    drop: bool = False


def json_reply(status: int, payload: Any, headers: Headers = ()) -> SimReply:
    return SimReply(status, orjson.dumps(payload), headers)


def azure_error(status: int, code: str, message: str, headers: Headers = ()) -> SimReply:
    """Azure OpenAI's error shape: code and message (no type/param)."""
    return json_reply(status, {"error": {"code": code, "message": message}}, headers)


async def send_reply(send: Send, reply: SimReply, watch: Watch | None = None) -> None:
    """Send ``reply``; with a ``watch``, stop when the client leaves during the delay or the stream, and note
    the outcome of an answer (200) in the request's record.

    Raises `Dropped` after a partial answer when ``reply.drop`` is set.
    """
    if watch is None:
        if reply.stream is not None or reply.drop or reply.delay_s:
            raise ValueError("a delayed, streamed or dropped reply is sent with a Watch on its client")
        await _start(send, reply)
        await send({"type": "http.response.body", "body": reply.body})
        return
    if reply.stream is not None:
        async with watch:
            if reply.delay_s > 0 and not await watch.sleep(reply.delay_s):
                watch.record["outcome"] = "client_disconnected"
                return
            await _start(send, reply)
            await play(send, reply.stream, watch, drop=reply.drop)
        return
    if reply.delay_s > 0:
        async with watch:
            if not await watch.sleep(reply.delay_s):
                watch.record["outcome"] = "client_disconnected"  # a real backend stops generating too
                return
    await _start(send, reply)
    if reply.drop:
        await send({"type": "http.response.body", "body": reply.body[: len(reply.body) // 2], "more_body": True})
        raise Dropped("simulated dropped connection")
    await send({"type": "http.response.body", "body": reply.body})
    if reply.status == 200:
        watch.record["outcome"] = "completed"


async def _start(send: Send, reply: SimReply) -> None:
    headers = [(b"content-type", reply.content_type.encode())]
    headers.extend((k.encode(), v.encode()) for k, v in reply.headers)
    await send({"type": "http.response.start", "status": reply.status, "headers": headers})
