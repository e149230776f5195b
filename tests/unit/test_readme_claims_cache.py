"""README claims about response caching, through Gateway.handle with a memory cache and a clock the test moves:
scopes `user`, `key` and `global`, `cache.rules`, TTL expiry, `max_entry_bytes`, `content_filter` answers never
cached, and semantic `vary_by_headers`. Backend calls are counted by the backend itself (the simulator's
`GET /_sim/requests`, or tests/upstream.py's recorder).
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager
from typing import Any

import httpx
import orjson
import pytest

from aigw.serve import BackgroundServers
from gateway_core.app import Gateway
from gateway_core.clock import ManualClock
from gateway_core.config import config_from_dict, sha256_hex
from gateway_core.context import GatewayRequest
from gateway_core.simulator.app import SimulatorApp
from gateway_core.simulator.settings import SimConfig
from tests.inprocess import running
from tests.upstream import serve_recorders

NOW = 1_795_000_000.0
KEYS = {  # name -> (user, tenant)
    "alice-1": ("alice", "contoso"),
    "alice-2": ("alice", "contoso"),
    "carol": ("carol", "contoso"),
    "bob": ("bob", "fabrikam"),
}


@pytest.fixture(scope="module")
def sim() -> Iterator[str]:
    servers = BackgroundServers()
    url = f"http://127.0.0.1:{servers.serve(SimulatorApp(SimConfig()))}"
    yield url
    servers.stop()


@pytest.fixture(autouse=True)
def fresh_sim(sim: str) -> None:
    httpx.delete(sim + "/_sim/requests")


def chat_calls(sim: str) -> int:
    seen = httpx.get(sim + "/_sim/requests").json()["requests"]
    return len([r for r in seen if r["path"].endswith("/chat/completions")])


@asynccontextmanager
async def gateway(url: str, clock: ManualClock | None = None, **cache: Any) -> AsyncIterator[Gateway]:
    config = config_from_dict(
        {
            "backends": [
                {
                    "name": "b",
                    "url": url,
                    "auth": {"type": "none"},
                    "deployments": ["gpt-4o", "gpt-4o-mini", "text-embedding-3-small"],
                }
            ],
            "keys": [
                {"name": name, "sha256": sha256_hex(name), "user": user, "tenant": tenant}
                for name, (user, tenant) in KEYS.items()
            ],
            "cache": {"enabled": True, **cache},
            "stores": {"cache": "memory://", "health": "memory://"},
        }
    )
    async with running(config, clock or ManualClock(NOW)) as gw:
        yield gw


async def ask(
    gw: Gateway, text: str = "cache me", key: str = "alice-1", model: str = "gpt-4o", headers: Any = None
) -> str | None:
    """The x-aigw-cache of one deterministic chat request (None: caching is off for it)."""
    raw = orjson.dumps({"model": model, "messages": [{"role": "user", "content": text}], "temperature": 0})
    request = GatewayRequest("POST", "/v1/chat/completions", {}, {"api-key": key, **(headers or {})}, raw, len(raw))
    response = await gw.handle(request)
    assert response.status == 200, response.body
    await gw.tasks.drain()  # the entry is stored off the response path
    return response.header("x-aigw-cache")


@pytest.mark.parametrize(
    ("scope", "expected"),
    [
        ("user", {"alice-2": "HIT", "carol": "MISS", "bob": "MISS"}),
        ("key", {"alice-2": "MISS", "carol": "MISS", "bob": "MISS"}),
        ("global", {"alice-2": "HIT", "carol": "HIT", "bob": "HIT"}),
        ("tenant", {"alice-2": "HIT", "carol": "HIT", "bob": "MISS"}),
    ],
)
async def test_scopes_share_entries_exactly_as_documented(sim: str, scope: str, expected: dict[str, str]) -> None:
    async with gateway(sim, scope=scope) as gw:
        assert await ask(gw, scope) == "MISS"
        assert {key: await ask(gw, scope, key) for key in expected} == expected
        assert await ask(gw, scope) == "HIT"
    assert chat_calls(sim) == 1 + list(expected.values()).count("MISS")


async def test_ttl_expiry_through_the_gateway(sim: str) -> None:
    clock = ManualClock(NOW)
    async with gateway(sim, clock, ttl_s=60) as gw:
        assert await ask(gw) == "MISS"
        clock.advance(59)
        assert await ask(gw) == "HIT"
        clock.advance(2)
        assert await ask(gw) == "MISS"  # expired: asked again, and stored afresh
        assert await ask(gw) == "HIT"
    assert chat_calls(sim) == 2


async def test_cache_rules_turn_caching_on_or_off_and_set_the_ttl_per_deployment_and_tenant(sim: str) -> None:
    clock = ManualClock(NOW)
    rules = [
        {"deployments": ["gpt-4o-mini"], "ttl_s": 10},
        {"tenants": ["fabrikam"], "enabled": False},  # the last matching rule wins
    ]
    async with gateway(sim, clock, ttl_s=3600, rules=rules) as gw:
        assert await ask(gw, key="bob") is None and await ask(gw, key="bob") is None  # off for fabrikam
        assert [await ask(gw, model="gpt-4o-mini") for _ in range(2)] == ["MISS", "HIT"]
        assert [await ask(gw) for _ in range(2)] == ["MISS", "HIT"]
        clock.advance(11)
        assert await ask(gw, model="gpt-4o-mini") == "MISS"  # the rule's 10 s
        assert await ask(gw) == "HIT"  # the default hour
    assert chat_calls(sim) == 5


async def test_cache_rules_can_turn_caching_on_where_it_is_off(sim: str) -> None:
    async with gateway(sim, enabled=False, rules=[{"deployments": ["gpt-4o-mini"]}]) as gw:
        assert [await ask(gw, model="gpt-4o-mini") for _ in range(2)] == ["MISS", "HIT"]
        assert [await ask(gw) for _ in range(2)] == [None, None]
    assert chat_calls(sim) == 3


async def test_answers_over_max_entry_bytes_are_not_stored(sim: str) -> None:
    async with gateway(sim, max_entry_bytes=64) as gw:
        assert [await ask(gw) for _ in range(2)] == ["MISS", "MISS"]
    async with gateway(sim) as gw:
        assert [await ask(gw) for _ in range(2)] == ["MISS", "HIT"]  # the same answer fits the default
    assert chat_calls(sim) == 3


async def test_a_content_filter_answer_is_never_cached() -> None:
    with serve_recorders(1) as [(url, recorder)]:
        recorder.finish_reason = "content_filter"
        async with gateway(url) as gw:
            assert [await ask(gw) for _ in range(2)] == ["MISS", "MISS"]
            recorder.finish_reason = "stop"
            assert [await ask(gw, "stopped") for _ in range(2)] == ["MISS", "HIT"]
        assert len(recorder.received) == 3


async def test_semantic_hits_only_within_the_same_vary_by_headers_values(sim: str) -> None:
    semantic = {
        "deployments": ["gpt-4o-mini"],
        "embedding_deployment": "text-embedding-3-small",
        "vary_by_headers": ["x-lang"],
    }
    async with gateway(sim, semantic=semantic) as gw:
        fr, de = {"x-lang": "fr"}, {"x-lang": "de"}
        assert await ask(gw, "What is the capital of France?", model="gpt-4o-mini", headers=fr) == "MISS"
        assert await ask(gw, "what is the capital of france", model="gpt-4o-mini", headers=fr) == "SEMANTIC-HIT"
        assert await ask(gw, "what is the capital of france", model="gpt-4o-mini", headers=de) == "MISS"
    assert chat_calls(sim) == 2


async def test_concurrent_identical_misses_make_one_backend_call() -> None:
    # The overlap is made by holding the first call at the backend, not by latency: every follower's lookup
    # runs (without I/O, on a memory store) before the leader's request can even reach the backend.
    with serve_recorders(1) as [(url, recorder)]:
        recorder.gate = threading.Event()
        async with gateway(url) as gw:
            raw = orjson.dumps({"model": "gpt-4o", "messages": [{"role": "user", "content": "once"}], "temperature": 0})
            request = GatewayRequest("POST", "/v1/chat/completions", {}, {"api-key": "alice-1"}, raw, len(raw))
            calls = [asyncio.ensure_future(gw.handle(request)) for _ in range(10)]
            assert await asyncio.to_thread(recorder.arrived.wait, 30)  # the leader is at the backend, held
            recorder.gate.set()
            statuses = [response.header("x-aigw-cache") or "" for response in await asyncio.gather(*calls)]
        assert sorted(statuses) == ["HIT"] * 9 + ["MISS"]
        assert len(recorder.received) == 1  # without the single flight all ten would reach the (held) backend
