"""README: bodies pass through byte for byte; streams get `stream_options.include_usage` added upstream (and the
usage chunk hidden) unless the api-version predates it, in which case the usage is counted from the text.

The upstream is tests/upstream.py's recorder: it keeps the raw bytes, and its usage (705 tokens) disagrees
with its text (3 tokens), so each test fails if the gateway stopped doing what the README says.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator
from typing import Any

import orjson
import pytest

from gateway_core.app import Gateway
from gateway_core.clock import ManualClock
from gateway_core.config import config_from_dict, sha256_hex
from gateway_core.context import GatewayRequest, GatewayResponse
from tests.inprocess import running
from tests.upstream import USAGE, Recorder, serve_recorders

KEY = {"api-key": "pass-key"}
LIMIT = 100_000
START = 1_795_000_040.0  # 20 s into a minute: one window for the whole test
# Odd whitespace, keys out of order, unknown fields, unicode escapes and number spellings a re-serialiser changes.
ODD_BODY = (
    b'{ "zz_unknown_option" : {"b": 1, "a": [1.0e0, 2.50, -0]},\n\t"messages":[{"content":"caf\\u00e9 \\ud83d\\ude00",'
    b' "role" :"user"}] ,"temperature":0.0,  "a_future_field":null }'
)


@pytest.fixture(scope="module")
def upstream() -> Iterator[tuple[str, Recorder]]:
    with serve_recorders(1) as [(url, recorder)]:
        yield url, recorder


@pytest.fixture
async def gateway(upstream: tuple[str, Recorder]) -> AsyncIterator[Gateway]:
    upstream[1].received.clear()
    config = config_from_dict(
        {
            "backends": [{"name": "rec", "url": upstream[0], "auth": {"type": "none"}, "deployments": ["gpt-4o"]}],
            "keys": [{"name": "k", "sha256": sha256_hex("pass-key"), "user": "u"}],
            "limits": {"rules": [{"name": "u", "key": "user", "tokens_per_minute": LIMIT}]},
            "stores": {"counters": "memory://", "health": "memory://"},
        }
    )
    async with running(config, ManualClock(START)) as gw:
        yield gw


async def azure(gw: Gateway, raw: bytes, api_version: str = "2024-10-21") -> GatewayResponse:
    path = "/openai/deployments/gpt-4o/chat/completions"
    return await gw.handle(GatewayRequest("POST", path, {"api-version": api_version}, KEY, raw, len(raw)))


async def events(response: GatewayResponse) -> list[dict[str, Any]]:
    assert response.status == 200 and response.stream is not None
    data = b"".join([chunk async for chunk in response.stream]).split(b"\n\n")
    return [orjson.loads(e[6:]) for e in data if e.startswith(b"data: {")]


async def counted(gw: Gateway, first: GatewayResponse) -> int:
    """Tokens the gateway settled for ``first`` (already drained): read back through the rate-limit headers."""
    await gw.tasks.drain()
    # The same request again (not streamed) reserves the same estimate; the difference is what `first` cost.
    second = await azure(gw, orjson.dumps({"messages": [{"role": "user", "content": "count me"}], "max_tokens": 10}))
    before = int(first.header("x-ratelimit-remaining-tokens") or "")
    return before - int(second.header("x-ratelimit-remaining-tokens") or "")


def stream_body(**extra: Any) -> bytes:
    return orjson.dumps(
        {"messages": [{"role": "user", "content": "count me"}], "max_tokens": 10, "stream": True, **extra}
    )


async def test_an_odd_body_reaches_the_backend_byte_for_byte(gateway: Gateway, upstream: tuple[str, Recorder]) -> None:
    response = await azure(gateway, ODD_BODY)
    assert response.status == 200, response.body
    assert upstream[1].bodies() == [ODD_BODY]


async def test_an_odd_body_on_v1_reaches_the_backend_byte_for_byte(
    gateway: Gateway, upstream: tuple[str, Recorder]
) -> None:
    raw = b'{"model" : "gpt-4o",' + ODD_BODY[1:]
    response = await gateway.handle(GatewayRequest("POST", "/v1/chat/completions", {}, KEY, raw, len(raw)))
    assert response.status == 200, response.body
    assert upstream[1].bodies() == [raw]


async def test_a_stream_gets_include_usage_upstream_and_the_client_never_sees_that_chunk(
    gateway: Gateway, upstream: tuple[str, Recorder]
) -> None:
    raw = stream_body(zz_unknown={"kept": True})
    response = await azure(gateway, raw)
    received = await events(response)
    sent = orjson.loads(upstream[1].bodies()[0])
    assert sent == {**orjson.loads(raw), "stream_options": {"include_usage": True}}  # all else kept
    assert [e["choices"][0]["delta"].get("content") for e in received if e["choices"]][1:4] == ["one", " two", " three"]
    assert all(e["choices"] and e.get("usage") is None for e in received)  # no usage chunk: the client did not ask
    assert await counted(gateway, response) == USAGE["total_tokens"]  # the backend's usage, not the 3-token text


async def test_a_client_that_asked_for_usage_gets_the_chunk_and_its_body_unchanged(
    gateway: Gateway, upstream: tuple[str, Recorder]
) -> None:
    raw = stream_body(stream_options={"include_usage": True})
    received = await events(await azure(gateway, raw))
    assert upstream[1].bodies() == [raw]
    assert received[-1]["choices"] == [] and received[-1]["usage"] == USAGE


async def test_an_old_api_version_gets_no_stream_options_and_is_counted_from_the_text(
    gateway: Gateway, upstream: tuple[str, Recorder]
) -> None:
    raw = stream_body()
    response = await azure(gateway, raw, api_version="2024-06-01")
    received = await events(response)  # 200: Azure would have answered 400 to stream_options here
    assert upstream[1].bodies() == [raw]
    assert all(e.get("usage") is None for e in received)
    # The prompt as estimated, plus the 3 tokens of text that passed (not the backend's unseen 700).
    prompt = LIMIT - 10 - int(response.header("x-ratelimit-remaining-tokens") or "")
    assert await counted(gateway, response) == prompt + 3
