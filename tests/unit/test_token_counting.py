"""Counts against the usage.prompt_tokens OpenAI documents for known inputs (the cookbook's examples)."""

from __future__ import annotations

import base64
import struct
import zlib

import pytest

from gateway_core.tokens.counting import (
    chat_prompt_tokens,
    completion_prompt_tokens,
    embedding_input_tokens,
    text_tokens,
)
from gateway_core.tokens.encodings import encoding, encoding_for_model
from gateway_core.tokens.images import data_url_size, image_tokens

COOKBOOK_MESSAGES = [
    {
        "role": "system",
        "content": (
            "You are a helpful, pattern-following assistant that translates corporate jargon into plain English."
        ),
    },
    {"role": "system", "name": "example_user", "content": "New synergies will help drive top-line growth."},
    {"role": "system", "name": "example_assistant", "content": "Things working well together will increase revenue."},
    {
        "role": "system",
        "name": "example_user",
        "content": (
            "Let's circle back when we have more bandwidth to touch base on opportunities for increased leverage."
        ),
    },
    {
        "role": "system",
        "name": "example_assistant",
        "content": "Let's talk later when we're less busy about how to do better.",
    },
    {
        "role": "user",
        "content": "This late pivot means we don't have time to boil the ocean for the client deliverable.",
    },
]
WEATHER_TOOLS = [
    {
        "type": "function",
        "function": {
            "name": "get_current_weather",
            "description": "Get the current weather in a given location",
            "parameters": {
                "type": "object",
                "properties": {
                    "location": {"type": "string", "description": "The city and state, e.g. San Francisco, CA"},
                    "unit": {
                        "type": "string",
                        "description": "The unit of temperature to return",
                        "enum": ["celsius", "fahrenheit"],
                    },
                },
                "required": ["location"],
            },
        },
    }
]
WEATHER_MESSAGES = [
    {"role": "system", "content": "You are a helpful assistant that can answer to questions about the weather."},
    {"role": "user", "content": "What's the weather like in San Francisco?"},
]


@pytest.mark.parametrize(("model", "documented"), [("gpt-4o", 124), ("gpt-4o-mini", 124), ("gpt-4", 129)])
def test_cookbook_messages(model: str, documented: int) -> None:
    assert chat_prompt_tokens({"messages": COOKBOOK_MESSAGES}, encoding_for_model(model)) == documented


@pytest.mark.parametrize(("model", "documented"), [("gpt-4o", 101), ("gpt-4o-mini", 101), ("gpt-35-turbo", 105)])
def test_cookbook_tools(model: str, documented: int) -> None:
    body = {"messages": WEATHER_MESSAGES, "tools": WEATHER_TOOLS}
    assert chat_prompt_tokens(body, encoding_for_model(model)) == documented


@pytest.mark.parametrize(
    ("size", "detail", "documented"),
    [((1024, 1024), "high", 765), ((2048, 4096), "high", 1105), ((4096, 8192), "low", 85), ((512, 512), "high", 255)],
)
def test_image_tile_rules_match_the_published_examples(size: tuple[int, int], detail: str, documented: int) -> None:
    assert image_tokens(*size, detail) == documented


def png_data_url(width: int, height: int) -> str:
    header = (
        b"\x89PNG\r\n\x1a\n" + struct.pack(">I", 13) + b"IHDR" + struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    )
    header += struct.pack(">I", zlib.crc32(header[12:]))
    return "data:image/png;base64," + base64.b64encode(header).decode()


def test_images_in_messages_by_data_url_and_by_detail() -> None:
    assert data_url_size(png_data_url(2048, 4096)) == (2048, 4096)
    enc = encoding("o200k_base")
    text_only = chat_prompt_tokens(
        {"messages": [{"role": "user", "content": [{"type": "text", "text": "What?"}]}]}, enc
    )

    def with_image(url: str, detail: str) -> int:
        content = [
            {"type": "text", "text": "What?"},
            {"type": "image_url", "image_url": {"url": url, "detail": detail}},
        ]
        return chat_prompt_tokens({"messages": [{"role": "user", "content": content}]}, enc) - text_only

    assert with_image(png_data_url(2048, 4096), "high") == 1105
    assert with_image("https://example.invalid/cat.png", "low") == 85  # never fetched
    assert with_image("https://example.invalid/cat.png", "auto") == 765


def test_completions_and_embeddings_inputs() -> None:
    enc = encoding("cl100k_base")
    assert completion_prompt_tokens({"prompt": "hello world"}, enc) == 2
    assert completion_prompt_tokens({"prompt": ["hello world", "hello"]}, enc) == 3
    assert embedding_input_tokens({"input": [[1, 2, 3], [4, 5]]}, enc) == 5
    assert embedding_input_tokens({"input": [1, 2, 3]}, enc) == 3


def test_special_token_text_is_counted_not_refused() -> None:
    enc = encoding("o200k_base")
    assert chat_prompt_tokens({"messages": [{"role": "user", "content": "<|endoftext|>"}]}, enc) > 7


_LONG = " ".join(f"word{i}" for i in range(20_000))


def _tool(parameters: dict[str, object]) -> dict[str, object]:
    return {"type": "function", "function": {"name": "f", "parameters": parameters}}


@pytest.mark.parametrize(
    "extra",
    [
        {"response_format": {"type": "json_schema", "json_schema": {"name": "s", "schema": {"description": _LONG}}}},
        {
            "tools": [
                _tool(
                    {
                        "type": "object",
                        "properties": {
                            "a": {"type": "object", "properties": {"b": {"type": "string", "description": _LONG}}}
                        },
                    }
                )
            ]
        },
        {"tools": [_tool({"type": "object", "properties": {"a": {"type": "array", "items": {"description": _LONG}}}})]},
        {
            "tools": [
                _tool({"type": "object", "properties": {"a": {"anyOf": [{"type": "string", "description": _LONG}]}}})
            ]
        },
        {"tools": [_tool({"type": "object", "$defs": {"d": {"description": _LONG}}, "properties": {}})]},
        {
            "functions": [
                {
                    "name": "f",
                    "parameters": {
                        "type": "object",
                        "properties": {"a": {"type": "object", "properties": {"b": {"enum": [_LONG]}}}},
                    },
                }
            ]
        },
        {"prediction": {"type": "content", "content": _LONG}},
        {"data_sources": [{"type": "azure_search", "parameters": {"role_information": _LONG}}]},
    ],
    ids=[
        "response_format",
        "nested-properties",
        "items",
        "anyOf",
        "$defs",
        "nested-enum",
        "prediction",
        "data_sources",
    ],
)
def test_text_the_model_reads_outside_messages_is_counted(extra: dict[str, object]) -> None:
    """On a stream without usage the estimate is the charge: a 20,000-word schema used to count as ~13-44 tokens."""
    enc = encoding("o200k_base")
    counted = chat_prompt_tokens({"messages": [{"role": "user", "content": "hi"}], **extra}, enc)
    assert counted >= text_tokens(_LONG, enc)
