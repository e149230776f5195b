"""Between the two shapes of an answer: a stored JSON body replayed as SSE, and an SSE stream assembled to JSON."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import orjson

_WORDS_PER_CHUNK = 8


def _event(payload: dict[str, Any]) -> bytes:
    return b"data: " + orjson.dumps(payload) + b"\n\n"


async def replay_as_sse(answer: dict[str, Any], include_usage: bool) -> AsyncIterator[bytes]:
    """The chunks a backend would have streamed for ``answer`` (chat or completions), ending with [DONE]."""
    chat = answer.get("object") == "chat.completion"
    base = {
        "id": answer.get("id"),
        "object": "chat.completion.chunk" if chat else "text_completion",
        "created": answer.get("created"),
        "model": answer.get("model"),
        "system_fingerprint": answer.get("system_fingerprint"),
    }

    def chunk(choices: list[dict[str, Any]]) -> bytes:
        payload = {**base, "choices": choices}
        if include_usage:
            payload["usage"] = None
        return _event(payload)

    out: list[bytes] = []
    for choice in answer.get("choices") or ():
        index = choice.get("index", 0)
        if chat:
            message = choice.get("message") or {}
            out.append(
                chunk(
                    [
                        {
                            "index": index,
                            "delta": {"role": message.get("role", "assistant"), "content": ""},
                            "finish_reason": None,
                            "logprobs": None,
                        }
                    ]
                )
            )
            for piece in _pieces(message.get("content") or ""):
                out.append(
                    chunk([{"index": index, "delta": {"content": piece}, "finish_reason": None, "logprobs": None}])
                )
            calls = message.get("tool_calls")
            if calls:
                deltas = [{**call, "index": i} for i, call in enumerate(calls)]
                out.append(
                    chunk([{"index": index, "delta": {"tool_calls": deltas}, "finish_reason": None, "logprobs": None}])
                )
            out.append(
                chunk([{"index": index, "delta": {}, "finish_reason": choice.get("finish_reason"), "logprobs": None}])
            )
        else:
            for piece in _pieces(choice.get("text") or ""):
                out.append(chunk([{"index": index, "text": piece, "finish_reason": None, "logprobs": None}]))
            out.append(
                chunk([{"index": index, "text": "", "finish_reason": choice.get("finish_reason"), "logprobs": None}])
            )
    if include_usage and answer.get("usage") is not None:
        out.append(_event({**base, "choices": [], "usage": answer["usage"]}))
    out.append(b"data: [DONE]\n\n")
    # One write: a hit has nothing to wait for, and one send is cheaper than many.
    yield b"".join(out)


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


class StreamAssembler:
    """Rebuilds the complete JSON answer from a stream's chunks, so a streamed miss can be cached."""

    def __init__(self) -> None:
        self._buffer = b""
        self._head: dict[str, Any] = {}
        self._choices: dict[int, dict[str, Any]] = {}
        self.done = False  # saw data: [DONE]
        self.broken = False  # saw something it could not read (an error event, bad JSON)

    def feed(self, chunk: bytes) -> None:
        self._buffer += chunk
        while True:
            end = self._buffer.find(b"\n\n")
            if end < 0:
                return
            event, self._buffer = self._buffer[:end], self._buffer[end + 2 :]
            self._read(event.strip())

    def _read(self, event: bytes) -> None:
        if not event.startswith(b"data:"):
            return
        data = event[5:].strip()
        if data == b"[DONE]":
            self.done = True
            return
        try:
            payload = orjson.loads(data)
        except orjson.JSONDecodeError:
            self.broken = True
            return
        if "error" in payload:
            self.broken = True
            return
        if not self._head:
            self._head = {k: payload.get(k) for k in ("id", "created", "model", "system_fingerprint")}
            self._head["object"] = (
                "chat.completion" if payload.get("object") == "chat.completion.chunk" else "text_completion"
            )
        for part in payload.get("choices") or ():
            self._merge(part)

    def _merge(self, part: dict[str, Any]) -> None:
        index = part.get("index", 0)
        choice = self._choices.setdefault(index, {"index": index, "content": [], "text": [], "tools": {}})
        delta = part.get("delta")
        if isinstance(delta, dict):
            if delta.get("role"):
                choice["role"] = delta["role"]
            if isinstance(delta.get("content"), str):
                choice["content"].append(delta["content"])
            for call in delta.get("tool_calls") or ():
                slot = choice["tools"].setdefault(
                    call.get("index", 0), {"id": None, "type": "function", "function": {"name": "", "arguments": ""}}
                )
                if call.get("id"):
                    slot["id"] = call["id"]
                function = call.get("function") or {}
                slot["function"]["name"] += function.get("name") or ""
                slot["function"]["arguments"] += function.get("arguments") or ""
        elif isinstance(part.get("text"), str):
            choice["text"].append(part["text"])
        if part.get("finish_reason"):
            choice["finish_reason"] = part["finish_reason"]

    def answer(self, usage: dict[str, int]) -> dict[str, Any] | None:
        """The assembled answer, or None if the stream did not end cleanly."""
        if not self.done or self.broken or not self._choices:
            return None
        chat = self._head.get("object") == "chat.completion"
        choices = []
        for index in sorted(self._choices):
            c = self._choices[index]
            if chat:
                message: dict[str, Any] = {"role": c.get("role", "assistant"), "content": "".join(c["content"]) or None}
                if c["tools"]:
                    message["tool_calls"] = [c["tools"][i] for i in sorted(c["tools"])]
                choices.append(
                    {"index": index, "message": message, "finish_reason": c.get("finish_reason"), "logprobs": None}
                )
            else:
                choices.append(
                    {
                        "index": index,
                        "text": "".join(c["text"]),
                        "finish_reason": c.get("finish_reason"),
                        "logprobs": None,
                    }
                )
        return {**self._head, "choices": choices, "usage": usage}
