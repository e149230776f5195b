"""Server-sent events as Azure OpenAI frames them, and their pacing on the wire.

A stream is built whole before its first byte (`sse_stream`, pure, so its framing is unit-tested): an opening
chunk with the assistant's role (chat), one chunk per piece of the reply (words, or a forced tool call's
argument deltas), a chunk with the finish reason, the usage chunk when asked for, and ``data: [DONE]``.
`play` sends it at the deployment's tokens per second, stops when the client leaves, and can break off halfway.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass
from typing import Any

import orjson

from .answers import Answer
from .asgi import Dropped, Send, Watch

DONE = b"data: [DONE]\n\n"


@dataclass(frozen=True, slots=True)
class SseStream:
    """The frames of one stream; ``pieces`` are paced ``gap_s`` apart, the others sent as they come."""

    opening: tuple[bytes, ...]
    pieces: tuple[bytes, ...]
    closing: tuple[bytes, ...]  # ends with DONE
    gap_s: float = 0.0


def frame(chunk: dict[str, Any]) -> bytes:
    return b"data: " + orjson.dumps(chunk) + b"\n\n"


def sse_stream(answer: Answer, *, chat: bool, include_usage: bool, gap_s: float = 0.0) -> SseStream:
    """The frames streaming ``answer``; with ``include_usage`` every chunk has ``usage`` (null until the last)."""
    response = answer.response
    base = {
        "id": response["id"],
        "object": "chat.completion.chunk" if chat else "text_completion",
        "created": response["created"],
        "model": response["model"],
        "system_fingerprint": "fp_aigw_sim",
    }

    def event(part: Any, finish: str | None = None) -> bytes:
        """A chunk carrying ``part`` (a chat delta, or completion text) in each of the answer's choices."""
        key = "delta" if chat else "text"
        choices = [{"index": i, key: part, "finish_reason": finish, "logprobs": None} for i in range(answer.n)]
        chunk = {**base, "choices": choices}
        if include_usage:
            chunk["usage"] = None
        return frame(chunk)

    opening = (event(_role_delta(answer)),) if chat else ()
    pieces = tuple(event(_piece_delta(answer, piece) if chat else piece) for piece in answer.pieces)
    closing = [event({} if chat else "", answer.finish)]
    if include_usage:
        closing.append(frame({**base, "choices": [], "usage": response["usage"]}))
    closing.append(DONE)
    return SseStream(opening, pieces, tuple(closing), gap_s)


def _role_delta(answer: Answer) -> dict[str, Any]:
    """A chat stream's first delta: the assistant's role, and the forced tool call's name if there is one."""
    if answer.tool is None:
        return {"role": "assistant", "content": ""}
    call = {"index": 0, "id": answer.call_id, "type": "function", "function": {"name": answer.tool, "arguments": ""}}
    return {"role": "assistant", "content": None, "tool_calls": [call]}


def _piece_delta(answer: Answer, piece: str) -> dict[str, Any]:
    if answer.tool is None:
        return {"content": piece}
    return {"tool_calls": [{"index": 0, "function": {"arguments": piece}}]}


async def play(send: Send, stream: SseStream, watch: Watch, *, drop: bool = False) -> None:
    """Send ``stream`` (the response has started); stop if the client leaves, raise `Dropped` halfway if ``drop``."""
    for data in stream.opening:
        await send({"type": "http.response.body", "body": data, "more_body": True})
    for position, data in enumerate(stream.pieces):
        if watch.disconnected:
            watch.record["outcome"] = "client_disconnected"
            return
        if drop and position == len(stream.pieces) // 2:
            raise Dropped("simulated dropped connection")
        await send({"type": "http.response.body", "body": data, "more_body": True})
        if stream.gap_s:
            await asyncio.sleep(stream.gap_s)
    for position, data in enumerate(stream.closing):
        more = position < len(stream.closing) - 1
        await send({"type": "http.response.body", "body": data, "more_body": more})
    watch.record["outcome"] = "completed"
