"""Prompt tokens before the call, as the backend will count them.

Chat: every message costs 3 tokens of framing plus its role and content (and 1 more for a ``name``), and the
reply is primed with 3 more; tool (function) definitions are counted in the compact form the models see;
image parts follow the tile rules (``images.py``); nested schemas, ``response_format``, ``prediction`` and
``data_sources`` are counted from their JSON text. These rules reproduce the ``usage.prompt_tokens`` that
OpenAI documents for its examples (see tests/unit/test_token_counting.py); anything they cannot know (a new
content type) is counted from its JSON text, so it is never free.
"""

from __future__ import annotations

import asyncio
from typing import Any

import orjson
import tiktoken

from .images import image_part_tokens
from .long_runs import segmented_tokens
from .memo import TokenCountMemo

TOKENS_PER_MESSAGE = 3
TOKENS_PER_NAME = 1
REPLY_PRIMING = 3

# Framing of tool definitions: per function, per properties block, per property, per enum; measured by
# OpenAI per encoding family (the o200k models frame functions more tightly than the cl100k ones).
_TOOL_FRAMING = {
    "o200k_base": {"func_init": 7, "prop_init": 3, "prop_key": 3, "enum_init": -3, "enum_item": 3, "func_end": 12},
    "cl100k_base": {"func_init": 10, "prop_init": 3, "prop_key": 3, "enum_init": -3, "enum_item": 3, "func_end": 12},
}


# Bodies at least this large are counted in a worker thread, so the event loop goes on serving meanwhile. Below
# it a count costs the loop at most ~5 ms (16 KiB of letters without spaces; ordinary text ~1 ms), and the
# thread hop (~0.1-0.2 ms) would cost more than most counts it moves.
OFF_LOOP_BODY_BYTES = 16 * 1024
# Short texts that repeat (system prompts, few-shot messages, roles) are encoded once per process.
MEMO = TokenCountMemo()


def text_tokens(text: str, encoding: tiktoken.Encoding) -> int:
    # Special-token text in a prompt is ordinary text to the API; count it as such, never raise.
    if len(text) > MEMO.max_text_chars:
        return segmented_tokens(text, encoding)  # bounded tokenizer work, whatever the text's runs
    return MEMO.count(encoding, text)


async def prompt_tokens(operation: str, body: dict[str, Any], encoding: tiktoken.Encoding, body_bytes: int) -> int:
    """Prompt tokens of a request to ``operation``; large bodies are counted off the event loop."""
    count = {
        "chat/completions": chat_prompt_tokens,
        "completions": completion_prompt_tokens,
    }.get(operation, embedding_input_tokens)
    if body_bytes < OFF_LOOP_BODY_BYTES:
        return count(body, encoding)
    return await asyncio.to_thread(count, body, encoding)


def chat_prompt_tokens(body: dict[str, Any], encoding: tiktoken.Encoding) -> int:
    """Prompt tokens of a chat completions request: messages, tools/functions and images."""
    total = REPLY_PRIMING
    messages = body.get("messages")
    if isinstance(messages, list):
        for message in messages:
            total += _message_tokens(message, encoding)
    tools = body.get("tools")
    functions = [t.get("function") for t in tools if isinstance(t, dict)] if isinstance(tools, list) else []
    legacy = body.get("functions")
    if isinstance(legacy, list):
        functions.extend(legacy)
    defs = [f for f in functions if isinstance(f, dict)]
    if defs:
        total += tools_tokens(defs, encoding)
    return total + _other_read_fields_tokens(body, encoding)


def _other_read_fields_tokens(body: dict[str, Any], encoding: tiktoken.Encoding) -> int:
    """Fields besides messages and tools that the model reads: a structured-output schema, a predicted output,
    Azure's ``data_sources`` (On Your Data). Counted from their JSON text: over rather than under."""
    total = 0
    for field in ("response_format", "data_sources"):
        value = body.get(field)
        if value is not None:
            total += _json_tokens(value, encoding)
    prediction = body.get("prediction")
    if isinstance(prediction, dict) and isinstance(prediction.get("content"), str):
        total += text_tokens(prediction["content"], encoding)
    elif prediction is not None:
        total += _json_tokens(prediction, encoding)
    return total


def _message_tokens(message: Any, encoding: tiktoken.Encoding) -> int:
    if not isinstance(message, dict):
        return TOKENS_PER_MESSAGE + _json_tokens(message, encoding)
    total = TOKENS_PER_MESSAGE
    for key, value in message.items():
        if isinstance(value, str):
            total += text_tokens(value, encoding)
            if key == "name":
                total += TOKENS_PER_NAME
        elif key == "content" and isinstance(value, list):
            total += sum(_part_tokens(part, encoding) for part in value)
        elif value is not None:
            # tool_calls, function_call, audio references...: their JSON is what the model reads.
            total += _json_tokens(value, encoding)
    return total


def _part_tokens(part: Any, encoding: tiktoken.Encoding) -> int:
    if isinstance(part, dict):
        kind = part.get("type")
        if kind == "text" and isinstance(part.get("text"), str):
            return text_tokens(part["text"], encoding)
        if kind == "image_url":
            return image_part_tokens(part)
    return _json_tokens(part, encoding)


def tools_tokens(functions: list[dict[str, Any]], encoding: tiktoken.Encoding) -> int:
    framing = _TOOL_FRAMING.get(encoding.name, _TOOL_FRAMING["o200k_base"])
    total = 0
    for function in functions:
        total += framing["func_init"]
        description = str(function.get("description", "")).removesuffix(".")
        total += text_tokens(f"{function.get('name', '')}:{description}", encoding)
        parameters = function.get("parameters")
        properties = parameters.get("properties") if isinstance(parameters, dict) else None
        if isinstance(parameters, dict):
            total += _rest_tokens(parameters, _SCHEMA_FRAMED, encoding)  # $defs, anyOf, ... at the top
        if isinstance(properties, dict) and properties:
            total += framing["prop_init"]
            for name, spec in properties.items():
                total += framing["prop_key"]
                spec = spec if isinstance(spec, dict) else {}
                enum = spec.get("enum")
                if isinstance(enum, list):
                    total += framing["enum_init"]
                    for item in enum:
                        total += framing["enum_item"] + text_tokens(str(item), encoding)
                p_type = spec.get("type", "")
                p_desc = str(spec.get("description", "")).removesuffix(".")
                total += text_tokens(f"{name}:{p_type}:{p_desc}", encoding)
                # Nested properties, items, anyOf, $defs...: their descriptions are read too.
                total += _rest_tokens(spec, _PROPERTY_FRAMED, encoding)
    return total + framing["func_end"]


# The schema keys the framing above already counts; any other key is counted from its JSON text.
_SCHEMA_FRAMED = frozenset({"type", "properties", "required"})
_PROPERTY_FRAMED = frozenset({"type", "description", "enum"})


def _rest_tokens(schema: dict[str, Any], framed: frozenset[str], encoding: tiktoken.Encoding) -> int:
    rest = {key: value for key, value in schema.items() if key not in framed}
    return _json_tokens(rest, encoding) if rest else 0


def completion_prompt_tokens(body: dict[str, Any], encoding: tiktoken.Encoding) -> int:
    """Prompt tokens of a (legacy) completions request: a string, strings, or token arrays."""
    return _input_tokens(body.get("prompt"), encoding)


def embedding_input_tokens(body: dict[str, Any], encoding: tiktoken.Encoding) -> int:
    return _input_tokens(body.get("input"), encoding)


def _input_tokens(value: Any, encoding: tiktoken.Encoding) -> int:
    if isinstance(value, str):
        return text_tokens(value, encoding)
    if isinstance(value, list):
        if value and all(isinstance(v, int) for v in value):
            return len(value)  # already tokens
        return sum(_input_tokens(v, encoding) for v in value)
    return 0


def _json_tokens(value: Any, encoding: tiktoken.Encoding) -> int:
    return text_tokens(orjson.dumps(value).decode(), encoding)
