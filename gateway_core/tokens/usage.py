"""The backend's reported usage, read from JSON answers and from SSE streams as they pass through."""

from __future__ import annotations

import re
from collections.abc import AsyncIterator
from typing import Any

import orjson
import tiktoken

from ..context import TokenUsage, UsageSource
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
    # Cached and reasoning tokens are already part of prompt and completion tokens (the details break them out).
    tokens.prompt, tokens.completion, tokens.source = prompt, completion, UsageSource.BACKEND
    tokens.cached_prompt = _detail(usage, "prompt_tokens_details", "cached_tokens", prompt)
    tokens.reasoning = _detail(usage, "completion_tokens_details", "reasoning_tokens", completion)
    return True


def _detail(usage: dict[str, Any], group: str, name: str, at_most: int) -> int:
    """A count from one of usage's ``*_details`` objects; 0 if absent or not a count, never more than its whole."""
    details = usage.get(group)
    value = details.get(name) if isinstance(details, dict) else None
    if isinstance(value, bool) or not isinstance(value, int):
        return 0
    return min(max(value, 0), max(at_most, 0))


async def scan_sse(stream: AsyncIterator[bytes], tokens: TokenUsage) -> AsyncIterator[bytes]:
    """Relay ``stream`` event by event, reading the final usage chunk into ``tokens``.

    The usage chunk is dropped when aigw asked for it and the client did not (``tokens.usage_injected``). If the
    stream ends without usage (an old api-version, a backend that ignores ``stream_options``, a drop, the client
    gone), the completion is counted from everything the model generated that passed through (content, refusal,
    tool-call and function-call names and arguments, completions text), and the prompt from the pre-call count.
    """
    buffer = bytearray()
    scanned = 0  # where the search for the next event's end resumes: each byte is searched about once
    generated = _Generated()
    try:
        async for chunk in stream:
            buffer += chunk
            out: list[bytes] = []
            start = 0
            while (match := _EVENT_END.search(buffer, max(start, scanned))) is not None:
                event = _scan_event(bytes(buffer[start : match.end()]), tokens, generated)
                start = scanned = match.end()
                if event:
                    out.append(event)
            del buffer[:start]  # once per chunk, not once per event
            # An end not found yet may begin in the last 3 bytes (its first line break, of up to 4 bytes).
            scanned = max(0, len(buffer) - 3)
            if out:
                yield out[0] if len(out) == 1 else b"".join(out)
        if buffer.strip():
            # The end of the body ends the last event too, with or without its blank line (a bare `[DONE]`
            # line, a final usage chunk): read it, and pass it on terminated so the client's parser sees it.
            event = _scan_event(bytes(buffer), tokens, generated)
            if event:
                yield event.rstrip(b"\r\n") + b"\n\n"
    finally:
        if tokens.source is not UsageSource.BACKEND:
            enc = encoding(tokens.encoding or "o200k_base")
            tokens.prompt = tokens.prompt_estimate
            tokens.completion = generated.tokens(enc)
            tokens.source = UsageSource.COUNTED


class _Generated:
    """What the model generated in a stream, per choice and per field, to be counted if no usage arrives."""

    def __init__(self) -> None:
        self._parts: dict[tuple[int, str], list[str]] = {}

    def add(self, index: int, field: str, text: Any) -> None:
        if isinstance(text, str) and text:
            self._parts.setdefault((index, field), []).append(text)

    def add_function(self, index: int, field: str, function: Any) -> None:
        if isinstance(function, dict):
            self.add(index, f"{field}.name", function.get("name"))
            self.add(index, f"{field}.arguments", function.get("arguments"))

    def tokens(self, enc: tiktoken.Encoding) -> int:
        return sum(text_tokens("".join(parts), enc) for parts in self._parts.values())


# An event ends at a blank line: two line breaks in a row, each CRLF, LF or CR (SSE allows all three, mixed). A
# CR followed by LF is one CRLF break, never two.
_BREAK = rb"(?:\r\n|\r(?!\n)|\n)"
_EVENT_END = re.compile(_BREAK + _BREAK)


# Only chunks carrying one of these can hold usage or generated output: the others are not parsed.
_MARKS = (b'"content"', b'"text"', b'"refusal"', b'"tool_calls"', b'"function_call"', _USAGE_MARK, b'"usage": {')


def _scan_event(event: bytes, tokens: TokenUsage, generated: _Generated) -> bytes:
    """Read one SSE event; return it as it goes on to the client (b"" if nothing of it remains)."""
    if b"data:" not in event:
        return event
    lines = event.splitlines(keepends=True)
    kept = [line for line in lines if not _is_dropped_usage(line, tokens, generated)]
    if len(kept) == len(lines):
        return event
    return b"".join(kept) if any(line.startswith(b"data:") for line in kept) else b""


def _is_dropped_usage(line: bytes, tokens: TokenUsage, generated: _Generated) -> bool:
    """Inspect one ``data:`` line; True if it is the usage chunk that aigw asked for and the client did not."""
    if not line.startswith(b"data:"):
        return False
    data = line[5:].strip()
    if not data.startswith(b"{") or not any(mark in data for mark in _MARKS):
        return False
    try:
        chunk = orjson.loads(data)
    except orjson.JSONDecodeError:
        return False
    if not isinstance(chunk, dict):
        return False
    if _take(chunk.get("usage"), tokens):
        return tokens.usage_injected and not chunk.get("choices")
    for choice in chunk.get("choices") or ():
        if not isinstance(choice, dict):
            continue
        index = choice.get("index")
        index = index if isinstance(index, int) else 0
        delta = choice.get("delta")
        if not isinstance(delta, dict):
            generated.add(index, "text", choice.get("text"))  # completions
            continue
        generated.add(index, "content", delta.get("content"))
        generated.add(index, "refusal", delta.get("refusal"))
        generated.add_function(index, "function_call", delta.get("function_call"))
        calls = delta.get("tool_calls")
        for position, call in enumerate(calls if isinstance(calls, list) else ()):
            if isinstance(call, dict):
                at = call.get("index")
                generated.add_function(
                    index, f"tool_calls.{at if isinstance(at, int) else position}", call.get("function")
                )
    return False
