"""Rebuilds the complete JSON answer from a stream's chunks, so a streamed miss can be cached.

It reads SSE as servers send it: events separated by a blank line (``\\n\\n``, ``\\r\\n\\r\\n`` or ``\\r\\r``),
several ``data:`` lines joined, and a last event without its blank line (``data: [DONE]`` at the very end).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import orjson

from .fields import (
    CHUNK_CHAT_CHOICE,
    CHUNK_TOP,
    EVENT_END,
    FUNCTION,
    HEAD,
    LINE_END,
    LOGPROBS,
    MESSAGE,
    TEXT_CHOICE,
    TOOL_CALL,
    empty,
    only,
)


@dataclass(slots=True)
class _Choice:
    index: int
    role: str | None = None
    content: list[str] = field(default_factory=list)
    refusal: list[str] = field(default_factory=list)
    text: list[str] = field(default_factory=list)
    tools: dict[int, dict[str, Any]] = field(default_factory=dict)
    function_call: dict[str, str] | None = None
    logprobs: dict[str, list[Any]] | None = None
    filters: dict[str, Any] | None = None
    finish_reason: str | None = None


class StreamAssembler:
    def __init__(self) -> None:
        self._buffer = b""
        self._head: dict[str, Any] = {}
        self._prompt_filters: Any = None
        self._choices: dict[int, _Choice] = {}
        self.done = False  # saw data: [DONE]
        self.broken = False  # saw something it could not read (an error event, bad JSON)
        self.unreplayable = False  # saw a field that a replay would not reproduce

    def feed(self, chunk: bytes) -> None:
        self._buffer += chunk
        while (end := EVENT_END.search(self._buffer)) is not None:
            event, self._buffer = self._buffer[: end.start()], self._buffer[end.end() :]
            self._read(event)

    def close(self) -> None:
        """The stream ended: read a last event that came without its blank line."""
        if self._buffer.strip():
            self._read(self._buffer)
        self._buffer = b""

    def _read(self, event: bytes) -> None:
        lines = [line[5:] for line in LINE_END.split(event) if line.startswith(b"data:")]
        if not lines:
            return  # a comment, or id:/event:/retry: only
        data = b"\n".join(line[1:] if line.startswith(b" ") else line for line in lines).strip()
        if data == b"[DONE]":
            self.done = True
            return
        try:
            payload = orjson.loads(data)
        except orjson.JSONDecodeError:
            self.broken = True
            return
        if not isinstance(payload, dict) or "error" in payload or not isinstance(payload.get("choices"), list):
            self.broken = True
            return
        self._chunk(payload)

    def _chunk(self, payload: dict[str, Any]) -> None:
        if not only(payload, CHUNK_TOP):
            self.unreplayable = True
        if not self._head:
            self._head = {k: payload.get(k) for k in HEAD if k in payload or k != "service_tier"}
            self._head["object"] = (
                "chat.completion" if payload.get("object") == "chat.completion.chunk" else "text_completion"
            )
        filters = payload.get("prompt_filter_results")
        if not empty(filters):
            if self._prompt_filters is not None and filters != self._prompt_filters:
                self.unreplayable = True
            self._prompt_filters = filters
        chat = self._head["object"] == "chat.completion"
        for part in payload["choices"]:
            if not isinstance(part, dict) or not isinstance(part.get("index", 0), int):
                self.broken = True
                return
            if not only(part, CHUNK_CHAT_CHOICE if chat else TEXT_CHOICE):
                self.unreplayable = True
            index = part.get("index", 0)
            choice = self._choices.setdefault(index, _Choice(index))
            self._delta(choice, part.get("delta")) if chat else self._text(choice, part)
            self._logprobs(choice, part.get("logprobs"), chat)
            self._filters(choice, part.get("content_filter_results"))
            if part.get("finish_reason"):
                choice.finish_reason = part["finish_reason"]

    def _text(self, choice: _Choice, part: dict[str, Any]) -> None:
        if isinstance(part.get("text"), str):
            choice.text.append(part["text"])

    def _delta(self, choice: _Choice, delta: Any) -> None:
        if empty(delta):
            return
        if not isinstance(delta, dict):
            self.broken = True
            return
        if not only(delta, MESSAGE):
            self.unreplayable = True
        if delta.get("role"):
            choice.role = delta["role"]
        for name, pieces in (("content", choice.content), ("refusal", choice.refusal)):
            if isinstance(delta.get(name), str):
                pieces.append(delta[name])
        function_call = delta.get("function_call")
        if isinstance(function_call, dict):
            choice.function_call = choice.function_call or {"name": "", "arguments": ""}
            self._function(choice.function_call, function_call)
        for call in delta.get("tool_calls") or ():
            if not isinstance(call, dict) or not only(call, TOOL_CALL):
                self.unreplayable = True
                continue
            slot = choice.tools.setdefault(
                call.get("index", 0), {"id": None, "type": "function", "function": {"name": "", "arguments": ""}}
            )
            if call.get("id"):
                slot["id"] = call["id"]
            if call.get("type"):
                slot["type"] = call["type"]
            self._function(slot["function"], call.get("function") or {})

    def _function(self, into: dict[str, str], piece: Any) -> None:
        if not isinstance(piece, dict) or not only(piece, FUNCTION):
            self.unreplayable = True
            return
        for name in ("name", "arguments"):
            if isinstance(piece.get(name), str):
                into[name] += piece[name]

    def _logprobs(self, choice: _Choice, logprobs: Any, chat: bool) -> None:
        if empty(logprobs):
            return
        if not chat or not isinstance(logprobs, dict) or not only(logprobs, LOGPROBS):
            self.unreplayable = True  # completions logprobs (tokens, offsets) are not replayed
            return
        merged = choice.logprobs if choice.logprobs is not None else {}
        for name in ("content", "refusal"):
            if isinstance(logprobs.get(name), list):
                merged.setdefault(name, []).extend(logprobs[name])
        choice.logprobs = merged

    def _filters(self, choice: _Choice, filters: Any) -> None:
        # Azure sends the same verdicts on every chunk of a harmless answer; a replay repeats that one verdict.
        if empty(filters):
            return
        if choice.filters is not None and filters != choice.filters:
            self.unreplayable = True
        choice.filters = filters

    def answer(self, usage: dict[str, int]) -> dict[str, Any] | None:
        """The assembled answer, or None if the stream did not end cleanly or a replay would lose a field."""
        self.close()
        if not self.done or self.broken or self.unreplayable or not self._choices:
            return None
        chat = self._head.get("object") == "chat.completion"
        choices = [self._choice(self._choices[i], chat) for i in sorted(self._choices)]
        answer = {**self._head, "choices": choices, "usage": usage}
        if self._prompt_filters is not None:
            answer["prompt_filter_results"] = self._prompt_filters
        return answer

    @staticmethod
    def _choice(c: _Choice, chat: bool) -> dict[str, Any]:
        out: dict[str, Any] = {"index": c.index}
        if chat:
            message: dict[str, Any] = {"role": c.role or "assistant", "content": "".join(c.content) or None}
            if c.refusal:
                message["refusal"] = "".join(c.refusal)
            if c.function_call is not None:
                message["function_call"] = c.function_call
            if c.tools:
                message["tool_calls"] = [c.tools[i] for i in sorted(c.tools)]
            out["message"] = message
        else:
            out["text"] = "".join(c.text)
        out["finish_reason"] = c.finish_reason
        out["logprobs"] = c.logprobs
        if c.filters is not None:
            out["content_filter_results"] = c.filters
        return out
