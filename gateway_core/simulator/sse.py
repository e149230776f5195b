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

    def event(choices: list[dict[str, Any]]) -> bytes:
        chunk = {**base, "choices": choices}
        if include_usage:
            chunk["usage"] = None
        return frame(chunk)

    indexes = range(answer.n)
    opening: list[bytes] = []
    if chat:
        first: dict[str, Any] = {"role": "assistant", "content": ""}
        if answer.tool is not None:
            call = {
                "index": 0,
                "id": answer.call_id,
                "type": "function",
                "function": {"name": answer.tool, "arguments": ""},
            }
            first = {"role": "assistant", "content": None, "tool_calls": [call]}
        opening.append(event([{"index": i, "delta": first, "finish_reason": None, "logprobs": None} for i in indexes]))
    pieces = []
    for piece in answer.pieces:
        if not chat:
            pieces.append(
                event([{"index": i, "text": piece, "finish_reason": None, "logprobs": None} for i in indexes])
            )
            continue
        delta: dict[str, Any] = {"content": piece}
        if answer.tool is not None:
            delta = {"tool_calls": [{"index": 0, "function": {"arguments": piece}}]}
        pieces.append(event([{"index": i, "delta": delta, "finish_reason": None, "logprobs": None} for i in indexes]))
    last: list[dict[str, Any]]
    if chat:
        last = [{"index": i, "delta": {}, "finish_reason": answer.finish, "logprobs": None} for i in indexes]
    else:
        last = [{"index": i, "text": "", "finish_reason": answer.finish, "logprobs": None} for i in indexes]
    closing = [event(last)]
    if include_usage:
        closing.append(frame({**base, "choices": [], "usage": response["usage"]}))
    closing.append(DONE)
    return SseStream(tuple(opening), tuple(pieces), tuple(closing), gap_s)


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
