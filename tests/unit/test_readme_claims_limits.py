"""README claims about limit rules: each counter key (`key`, `ip`, `deployment`, `header:<name>`) separates what
it should, and the estimate is prompt + n x (`max_completion_tokens` or `max_tokens`).

The backend is tests/upstream.py's recorder, which reports 705 tokens of usage for every answer: with a limit
of 1000 and 300 completion tokens asked, one request fits and settles to 705, and a second on the same counter
(705 + 300 + prompt) is refused, while one on another counter is admitted.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager
from typing import Any

import orjson
import pytest

from gateway_core.app import Gateway
from gateway_core.clock import ManualClock
from gateway_core.config import config_from_dict, sha256_hex
from gateway_core.context import GatewayRequest, GatewayResponse
from tests.inprocess import running
from tests.upstream import serve_recorders

START = 1_795_000_040.0  # 20 s into a minute: one window for the whole test


@pytest.fixture(scope="module")
def upstream() -> Iterator[str]:
    with serve_recorders(1) as [(url, _)]:
        yield url


@asynccontextmanager
async def gateway(upstream: str, key: str, limit: int = 1000) -> AsyncIterator[Gateway]:
    config = config_from_dict(
        {
            "backends": [
                {"name": "rec", "url": upstream, "auth": {"type": "none"}, "deployments": ["gpt-4o", "gpt-4o-mini"]}
            ],
            "keys": [  # two keys of one user, and a second user
                {"name": "k1", "sha256": sha256_hex("key-one"), "user": "alice", "tenant": "t"},
                {"name": "k2", "sha256": sha256_hex("key-two"), "user": "alice", "tenant": "t"},
                {"name": "k3", "sha256": sha256_hex("key-three"), "user": "bob", "tenant": "t"},
            ],
            "limits": {"rules": [{"name": "r", "key": key, "tokens_per_minute": limit}]},
            "stores": {"counters": "memory://", "health": "memory://"},
        }
    )
    async with running(config, ManualClock(START)) as gw:
        yield gw


async def ask(
    gw: Gateway, key: str = "key-one", model: str = "gpt-4o", ip: str = "192.0.2.1", headers: Any = None, **body: Any
) -> GatewayResponse:
    raw = orjson.dumps({"model": model, "messages": [{"role": "user", "content": "hello"}], **body})
    request = GatewayRequest(
        "POST", "/v1/chat/completions", {}, {"api-key": key, **(headers or {})}, raw, len(raw), client_ip=ip
    )
    response = await gw.handle(request)
    await gw.tasks.drain()  # settled to the recorder's 705 before the next request
    return response


SAME_AND_OTHER: list[tuple[str, dict[str, Any], dict[str, Any], dict[str, Any]]] = [
    # (rule key, first request, same counter, another counter)
    ("key", {}, {"key": "key-one"}, {"key": "key-two"}),  # same user, another key
    ("ip", {}, {"key": "key-three"}, {"ip": "192.0.2.2"}),  # another user, same address
    ("deployment", {}, {"key": "key-three"}, {"model": "gpt-4o-mini"}),
    (
        "header:x-team",
        {"headers": {"x-team": "red"}},
        {"key": "key-three", "headers": {"x-team": "red"}},
        {"headers": {"x-team": "blue"}},
    ),
]


@pytest.mark.parametrize(("rule_key", "first", "same", "other"), SAME_AND_OTHER)
async def test_each_counter_key_separates_what_it_names(
    upstream: str, rule_key: str, first: dict[str, Any], same: dict[str, Any], other: dict[str, Any]
) -> None:
    async with gateway(upstream, rule_key) as gw:
        assert (await ask(gw, max_tokens=300, **first)).status == 200
        refused = await ask(gw, max_tokens=300, **same)
        assert refused.status == 429, rule_key
        assert orjson.loads(refused.body)["error"]["code"] == "tokens_per_minute_exceeded"
        assert (await ask(gw, max_tokens=300, **other)).status == 200, rule_key


async def test_the_estimate_is_prompt_plus_n_times_max_completion_tokens(upstream: str) -> None:
    limit = 100_000
    async with gateway(upstream, "user", limit) as gw:
        # One token asked by bob gives the prompt's estimate; alice's request differs only in n and the maximum.
        prompt = (
            limit - 1 - int((await ask(gw, "key-three", max_tokens=1)).header("x-ratelimit-remaining-tokens") or "")
        )
        response = await ask(gw, n=3, max_completion_tokens=100, max_tokens=7)  # max_completion_tokens wins
        assert response.header("x-ratelimit-remaining-tokens") == str(limit - (prompt + 3 * 100))
