"""What `aigw serve` charges to a caller's limits, read from its counters store once it has shut down.

The gateway settles each request in the background; stopping it drains that work, so the store then holds the
final count without any waiting in the test.
"""

from __future__ import annotations

import socket
import sqlite3
import time
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

import orjson
from openai import AzureOpenAI

from gateway_core.tokens.counting import chat_prompt_tokens, text_tokens
from gateway_core.tokens.encodings import encoding
from tests.servers import (
    CLIENT_KEY,
    GATEWAY_ENV,
    clear_sim_requests,
    gateway_config,
    run_aigw,
    sim_requests,
    write_yaml,
)

TOOLS: Any = [
    {
        "type": "function",
        "function": {
            "name": "lookup_order",
            "description": "Find an order",
            "parameters": {"type": "object", "properties": {"text": {"type": "string"}}},
        },
    }
]


def limited_config(sim_url: str, folder: Path, rules: list[dict[str, Any]], **extra: Any) -> Path:
    stores = {"health": "memory://", "counters": f"sqlite:///{folder}/counters.db", **extra.pop("stores", {})}
    config = gateway_config(sim_url, limits={"rules": rules}, stores=stores, **extra)
    return write_yaml(folder / "gateway.yaml", config)


def charged(folder: Path, key: str) -> int:
    """The tokens counted under ``key`` (all windows), from the stopped gateway's counters store."""
    with sqlite3.connect(folder / "counters.db") as db:
        row = db.execute("SELECT COALESCE(SUM(value), 0) FROM counters WHERE key = ?", (key,)).fetchone()
    return int(row[0])


def test_forced_tool_calls_streamed_without_usage_are_charged_for_their_arguments(sim_url: str, tmp_path: Path) -> None:
    config = limited_config(sim_url, tmp_path, [{"name": "alice-tpm", "key": "user", "tokens_per_minute": 100_000}])
    messages: Any = [{"role": "user", "content": "Where is order 1234?"}]
    body = {
        "messages": messages,
        "tools": TOOLS,
        "tool_choice": {"type": "function", "function": {"name": "lookup_order"}},
    }
    with run_aigw(["serve", "--config", str(config)], env=GATEWAY_ENV) as gateway:
        # api-version 2024-06-01 predates stream_options: the backend sends no usage chunk.
        client = AzureOpenAI(azure_endpoint=gateway.url, api_key=CLIENT_KEY, api_version="2024-06-01", max_retries=0)
        stream = client.chat.completions.create(model="gpt-4o", stream=True, max_tokens=500, **body)
        name, arguments = "", ""
        for chunk in stream:
            assert chunk.usage is None
            for call in (chunk.choices[0].delta.tool_calls or []) if chunk.choices else []:
                name += (call.function and call.function.name) or ""
                arguments += (call.function and call.function.arguments) or ""
    assert name == "lookup_order" and len(arguments) > 40
    enc = encoding("o200k_base")
    prompt = chat_prompt_tokens(body, enc)
    generated = text_tokens(name, enc) + text_tokens(arguments, enc)
    # Neither the estimate (prompt + 500) nor the prompt alone (what was charged when arguments counted as zero).
    assert charged(tmp_path, "tpm:alice-tpm:contoso/alice") == prompt + generated


def test_the_semantic_caches_embedding_is_charged_to_the_caller_and_skipped_when_over_its_limit(
    sim_url: str, tmp_path: Path
) -> None:
    first, second = "What is the capital of France?", "How many moons does Jupiter have today?"
    embedded = text_tokens(f"user: {first}", encoding("cl100k_base"))  # the text the cache embeds, as billed
    # Room for the first embedding and not for the second, whichever side of a minute boundary they fall on.
    rule = {
        "name": "embed-tpm",
        "key": "user",
        "tokens_per_minute": embedded + 2,
        "deployments": ["text-embedding-3-small"],
    }
    cache = {
        "enabled": True,
        "semantic": {"deployments": ["gpt-4o-mini"], "embedding_deployment": "text-embedding-3-small"},
    }
    config = limited_config(sim_url, tmp_path, [rule], cache=cache, stores={"cache": f"sqlite:///{tmp_path}/cache.db"})
    with run_aigw(["serve", "--config", str(config)], env=GATEWAY_ENV) as gateway:
        client = AzureOpenAI(azure_endpoint=gateway.url, api_key=CLIENT_KEY, api_version="2024-10-21", max_retries=0)

        def ask(text: str) -> tuple[str, list[str]]:
            clear_sim_requests(sim_url)
            raw = client.chat.completions.with_raw_response.create(
                model="gpt-4o-mini", messages=[{"role": "user", "content": text}], temperature=0
            )
            assert raw.parse().choices[0].message.content
            return raw.headers["x-aigw-cache"], [r["path"].rsplit("/", 1)[-1] for r in sim_requests(sim_url)]

        assert ask(first) == ("MISS", ["embeddings", "completions"])
        # Over its embeddings budget: answered all the same, exact-only, without calling the embeddings backend.
        assert ask(second) == ("MISS", ["completions"])
        assert ask(second)[0] == "HIT"  # the exact entry was stored
    assert charged(tmp_path, "tpm:embed-tpm:contoso/alice") == embedded


def test_a_client_that_disconnects_while_the_backend_generates_is_charged_the_estimate(
    sim_url: str, tmp_path: Path
) -> None:
    config = limited_config(sim_url, tmp_path, [{"name": "alice-tpm", "key": "user", "tokens_per_minute": 100_000}])
    marker = uuid.uuid4().hex
    messages: Any = [{"role": "user", "content": "Write a long story."}]
    body = orjson.dumps({"messages": messages, "max_tokens": 700})
    head = (
        "POST /openai/deployments/gpt-4o/chat/completions?api-version=2024-10-21 HTTP/1.1\r\nhost: aigw\r\n"
        f"api-key: {CLIENT_KEY}\r\ncontent-type: application/json\r\ncontent-length: {len(body)}\r\n"
        f"x-request-id: {marker}\r\nx-aigw-sim-latency-ms: 60000\r\n\r\n"
    )

    def outcome() -> object:
        record = next((r for r in sim_requests(sim_url) if r["headers"].get("x-request-id") == marker), None)
        return None if record is None else record.get("outcome", "started")

    with run_aigw(["serve", "--config", str(config)], env=GATEWAY_ENV) as gateway:
        host, port = gateway.url.removeprefix("http://").rsplit(":", 1)
        with socket.create_connection((host, int(port)), timeout=15) as sock:
            sock.sendall(head.encode() + body)
            wait_for(lambda: outcome() is not None, "the request to reach the backend")
        wait_for(lambda: outcome() == "client_disconnected", "the upstream call to be cancelled")
    # The backend got the request (Azure may bill it): the estimate stays charged. It was 0.
    assert (
        charged(tmp_path, "tpm:alice-tpm:contoso/alice")
        == chat_prompt_tokens({"messages": messages}, encoding("o200k_base")) + 700
    )


def wait_for(condition: Callable[[], bool], what: str) -> None:
    deadline = time.monotonic() + 15
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.05)
