"""The fields of an answer that the cache carries between its JSON and SSE shapes, and how SSE is framed.

A field outside these sets is allowed only when empty (null, "", [], {}): it carries nothing to reproduce.
"""

from __future__ import annotations

import re
from typing import Any

EVENT_END = re.compile(rb"\r\n\r\n|\n\n|\r\r")  # a blank line, whichever line ending the server uses
LINE_END = re.compile(rb"\r\n|\r|\n")

HEAD = ("id", "created", "model", "system_fingerprint", "service_tier")
TOP = frozenset({*HEAD, "object", "choices", "usage", "prompt_filter_results"})
CHUNK_TOP = TOP | {"obfuscation"}  # random padding some servers add to each chunk; it carries nothing
CHAT_CHOICE = frozenset({"index", "message", "finish_reason", "logprobs", "content_filter_results"})
CHUNK_CHAT_CHOICE = frozenset({"index", "delta", "finish_reason", "logprobs", "content_filter_results"})
TEXT_CHOICE = frozenset({"index", "text", "finish_reason", "logprobs", "content_filter_results"})
MESSAGE = frozenset({"role", "content", "refusal", "tool_calls", "function_call"})
TOOL_CALL = frozenset({"index", "id", "type", "function"})
FUNCTION = frozenset({"name", "arguments"})
LOGPROBS = frozenset({"content", "refusal"})  # chat logprobs; completions logprobs are not replayed


def empty(value: Any) -> bool:
    return value is None or value == "" or value == [] or value == {}


def only(obj: dict[str, Any], known: frozenset[str]) -> bool:
    """True if every field of ``obj`` outside ``known`` is empty."""
    return all(key in known or empty(value) for key, value in obj.items())
