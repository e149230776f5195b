"""Between the two shapes of an answer: a stored JSON body replayed as SSE, and an SSE stream assembled to JSON.

Both directions carry the same fields (content, refusal, tool calls, legacy function_call, chat logprobs,
Azure's content and prompt filter results). A field either direction does not reproduce makes the answer
unreplayable: the assembler then refuses to build it (the stream is not cached) and ``replayable`` says a
stored answer may not answer a stream (the request goes to the backend). Empty values (null, "", [], {}) of
unknown fields carry nothing and are allowed.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import orjson

from .fields import CHAT_CHOICE, LOGPROBS, MESSAGE, TEXT_CHOICE, TOP, empty, only

_WORDS_PER_CHUNK = 8


def replayable(answer: dict[str, Any]) -> bool:
    """Whether ``replay_as_sse`` reproduces every field of this stored JSON answer."""
    if not only(answer, TOP):
        return False
    chat = answer.get("object") == "chat.completion"
    for choice in answer.get("choices") or ():
        if not isinstance(choice, dict) or not only(choice, CHAT_CHOICE if chat else TEXT_CHOICE):
            return False
        if not chat and not empty(choice.get("logprobs")):
            return False  # completions logprobs (tokens, offsets) are not replayed
        if chat:
            message = choice.get("message")
            logprobs = choice.get("logprobs")
            if not isinstance(message, dict) or not only(message, MESSAGE):
                return False
            if not empty(logprobs) and (not isinstance(logprobs, dict) or not only(logprobs, LOGPROBS)):
                return False
    return True


def _event(payload: dict[str, Any]) -> bytes:
    return b"data: " + orjson.dumps(payload) + b"\n\n"


async def replay_as_sse(answer: dict[str, Any], include_usage: bool) -> AsyncIterator[bytes]:
    """The chunks a backend would have streamed for ``answer`` (chat or completions), ending with [DONE].

    ``usage`` appears (null on each chunk, then a final usage chunk) only with ``include_usage``.
    """
    chat = answer.get("object") == "chat.completion"
    base = {
        "id": answer.get("id"),
        "object": "chat.completion.chunk" if chat else "text_completion",
        "created": answer.get("created"),
        "model": answer.get("model"),
        "system_fingerprint": answer.get("system_fingerprint"),
    }
    if "service_tier" in answer:
        base["service_tier"] = answer["service_tier"]

    def chunk(choices: list[dict[str, Any]], **extra: Any) -> bytes:
        payload = {**base, "choices": choices, **extra}
        if include_usage:
            payload["usage"] = None
        return _event(payload)

    out: list[bytes] = []
    if not empty(answer.get("prompt_filter_results")):
        out.append(chunk([], prompt_filter_results=answer["prompt_filter_results"]))  # as Azure sends it: first
    for choice in answer.get("choices") or ():
        out.extend(chunk([part]) for part in (_chat_parts(choice) if chat else _text_parts(choice)))
    if include_usage and answer.get("usage") is not None:
        out.append(_event({**base, "choices": [], "usage": answer["usage"]}))
    out.append(b"data: [DONE]\n\n")
    # One write: a hit has nothing to wait for, and one send is cheaper than many.
    yield b"".join(out)


def _chat_parts(choice: dict[str, Any]) -> list[dict[str, Any]]:
    index = choice.get("index", 0)
    message = choice.get("message") or {}
    filters = choice.get("content_filter_results")
    logprobs = choice.get("logprobs")

    def part(delta: dict[str, Any], finish_reason: Any = None, logprobs: Any = None) -> dict[str, Any]:
        out = {"index": index, "delta": delta, "finish_reason": finish_reason, "logprobs": logprobs}
        if not empty(filters):
            out["content_filter_results"] = filters
        return out

    parts = [part({"role": message.get("role", "assistant"), "content": ""})]
    content, refusal = message.get("content") or "", message.get("refusal") or ""
    if not empty(logprobs):  # the text in one piece with all its logprobs, so the two stay aligned
        delta = {k: v for k, v in (("content", content), ("refusal", refusal)) if v}
        parts.append(part(delta, logprobs=logprobs))
    else:
        parts.extend(part({"content": piece}) for piece in _pieces(content))
        parts.extend(part({"refusal": piece}) for piece in _pieces(refusal))
    if message.get("function_call"):
        parts.append(part({"function_call": message["function_call"]}))
    if message.get("tool_calls"):
        parts.append(part({"tool_calls": [{**call, "index": i} for i, call in enumerate(message["tool_calls"])]}))
    parts.append(part({}, choice.get("finish_reason")))
    return parts


def _text_parts(choice: dict[str, Any]) -> list[dict[str, Any]]:
    index = choice.get("index", 0)
    filters = choice.get("content_filter_results")

    def part(text: str, finish_reason: Any = None) -> dict[str, Any]:
        out = {"index": index, "text": text, "finish_reason": finish_reason, "logprobs": None}
        if not empty(filters):
            out["content_filter_results"] = filters
        return out

    return [*(part(piece) for piece in _pieces(choice.get("text") or "")), part("", choice.get("finish_reason"))]


def _pieces(text: str) -> list[str]:
    words = text.split(" ")
    return (
        [
            " ".join(words[i : i + _WORDS_PER_CHUNK]) + (" " if i + _WORDS_PER_CHUNK < len(words) else "")
            for i in range(0, len(words), _WORDS_PER_CHUNK)
        ]
        if text
        else []
    )
