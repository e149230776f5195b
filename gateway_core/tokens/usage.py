"""The backend's reported usage, read from JSON answers and from SSE streams as they pass through."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import orjson

from ..context import TokenUsage
from .counting import text_tokens
from .encodings import encoding

_USAGE_MARK = b'"usage":{'


def record_json_usage(body: bytes, tokens: TokenUsage) -> None:
    """Take ``usage`` from a complete JSON answer (chat, completions, embeddings) into ``tokens``."""
    if _USAGE_MARK not in body and b'"usage": {' not in body:
        return
    try:
        usage = orjson.loads(body).get("usage")
    except (orjson.JSONDecodeError, AttributeError):
        return
    _take(usage, tokens)


def _take(usage: Any, tokens: TokenUsage) -> bool:
    if not isinstance(usage, dict):
        return False
    prompt = usage.get("prompt_tokens")
    total = usage.get("total_tokens")
    completion = usage.get("completion_tokens")
    if not isinstance(prompt, int):
        return False
    if not isinstance(completion, int):  # embeddings report prompt and total only
        completion = total - prompt if isinstance(total, int) else 0
    # Reasoning tokens are already part of completion_tokens (completion_tokens_details breaks them out).
    tokens.prompt, tokens.completion, tokens.source = prompt, completion, "backend"
    return True


async def scan_sse(stream: AsyncIterator[bytes], tokens: TokenUsage) -> AsyncIterator[bytes]:
    """Relay ``stream`` event by event, reading the final usage chunk into ``tokens``.

    The usage chunk is dropped when aigw asked for it and the client did not (``tokens.usage_injected``). If the
    stream ends without usage (backend dropped, client gone), the completion is counted from the text that
    passed through, and the prompt from the pre-call count.
    """
    buffer = b""
    pieces: list[str] = []
    try:
        async for chunk in stream:
            buffer += chunk
            out: list[bytes] = []
            while True:
                end, sep = _event_end(buffer)
                if end < 0:
                    break
                event = buffer[: end + sep]
                buffer = buffer[end + sep :]
                if _inspect(event, tokens, pieces) and tokens.usage_injected:
                    continue
                out.append(event)
            if out:
                yield out[0] if len(out) == 1 else b"".join(out)
        if buffer:
            yield buffer
    finally:
        if tokens.source != "backend":
            enc = encoding(tokens.encoding or "o200k_base")
            tokens.prompt = tokens.prompt_estimate
            tokens.completion = text_tokens("".join(pieces), enc)
            tokens.source = "counted"


def _event_end(buffer: bytes) -> tuple[int, int]:
    lf = buffer.find(b"\n\n")
    crlf = buffer.find(b"\r\n\r\n")
    if crlf >= 0 and (lf < 0 or crlf < lf):
        return crlf, 4
    return lf, 2 if lf >= 0 else 0


def _inspect(event: bytes, tokens: TokenUsage, pieces: list[str]) -> bool:
    """Read one SSE event; True if it was the usage chunk."""
    start = event.find(b"data:")
    if start < 0:
        return False
    data = event[start + 5 :].strip()
    if not data.startswith(b"{"):
        return False
    is_usage = _USAGE_MARK in data or b'"usage": {' in data
    if not is_usage and b'"content"' not in data and b'"text"' not in data:
        return False
    try:
        chunk = orjson.loads(data)
    except orjson.JSONDecodeError:
        return False
    if is_usage and _take(chunk.get("usage"), tokens):
        return not chunk.get("choices")
    for choice in chunk.get("choices") or ():
        if isinstance(choice, dict):
            delta = choice.get("delta")
            text = delta.get("content") if isinstance(delta, dict) else choice.get("text")
            if isinstance(text, str):
                pieces.append(text)
    return False
