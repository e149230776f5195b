"""The exact cache and the token limits both on SQLite in one process: a miss's lookup and its admission are
one store round trip (counted, not timed); a hit admits nothing; a refusal, and the counts, are the same as
with stores that make a trip each (memory); a waiter answered by the leader of its single flight is not counted.
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import orjson
import pytest

from gateway_core.app import Gateway
from gateway_core.clock import ManualClock
from gateway_core.config import config_from_dict, sha256_hex
from gateway_core.context import GatewayRequest, GatewayResponse
from gateway_core.limits.windows import quota_period
from gateway_core.storage import sqlite
from tests.inprocess import running
from tests.upstream import serve_recorders

NOW = 1_795_000_000.0
QUOTA = 1_500  # the upstream reports 705 tokens an answer: two requests fit, the third is refused


@asynccontextmanager
async def gateway(url: str, stores: dict[str, str]) -> AsyncIterator[Gateway]:
    config = config_from_dict(
        {
            "backends": [{"name": "b", "url": url, "auth": {"type": "none"}, "deployments": ["gpt-4o"]}],
            "keys": [{"name": "k", "sha256": sha256_hex("alice"), "user": "alice", "tenant": "contoso"}],
            "limits": {
                "rules": [
                    {"name": "tpm", "key": "user", "tokens_per_minute": 1_000_000},
                    {"name": "daily", "key": "tenant", "token_quota": QUOTA, "quota_period": "daily"},
                ]
            },
            "cache": {"enabled": True},
            "stores": {"health": "memory://", **stores},
        }
    )
    async with running(config, ManualClock(NOW)) as gw:
        yield gw


def sqlite_stores(tmp_path: Path) -> dict[str, str]:
    return {"counters": f"sqlite:///{tmp_path}/counters.db", "cache": f"sqlite:///{tmp_path}/cache.db"}


def chat(text: str) -> GatewayRequest:
    raw = orjson.dumps(
        {"model": "gpt-4o", "messages": [{"role": "user", "content": text}], "temperature": 0, "max_tokens": 100}
    )
    return GatewayRequest("POST", "/v1/chat/completions", {}, {"api-key": "alice"}, raw, len(raw))


async def quota_used(gw: Gateway) -> int:
    await gw.tasks.drain()  # settlements and cache puts are made off the response path
    assert gw.counters is not None
    start, _ = quota_period(NOW, "daily")
    return await gw.counters.get("quota:daily:contoso", start)


@pytest.fixture
def request_trips(monkeypatch: pytest.MonkeyPatch) -> Callable[[], list[str]]:
    """The counters and cache stores' round trips made by the calling task itself (the request's path), not by
    background tasks (settlements, cache puts)."""
    trips: list[tuple[str, asyncio.Task[Any] | None]] = []
    real = sqlite._SqliteThread.submit

    def submit(self: sqlite._SqliteThread, fn: Callable[[Any], Any]) -> Any:
        if self._path.name in ("counters.db", "cache.db"):
            trips.append((self._path.name, asyncio.current_task()))
        return real(self, fn)

    monkeypatch.setattr(sqlite._SqliteThread, "submit", submit)

    def mine() -> list[str]:
        me = asyncio.current_task()
        found = [name for name, task in trips if task is me]
        trips.clear()
        return found

    return mine


async def test_a_miss_looks_up_and_admits_in_one_store_trip(
    tmp_path: Path, request_trips: Callable[[], list[str]]
) -> None:
    with serve_recorders(1) as [(url, _)]:
        async with gateway(url, sqlite_stores(tmp_path)) as gw:
            await gw.handle(chat("warm up"))  # reads the previous minute's total, once a minute
            await quota_used(gw)
            request_trips()
            response = await gw.handle(chat("a miss"))
            assert response.status == 200 and response.header("x-aigw-cache") == "MISS"
            assert request_trips() == ["cache.db"]  # was cache.db then counters.db: two trips in series
            assert await quota_used(gw) == 2 * 705  # admitted once, settled to the actual usage once


async def test_a_hit_admits_nothing(tmp_path: Path, request_trips: Callable[[], list[str]]) -> None:
    with serve_recorders(1) as [(url, recorder)]:
        async with gateway(url, sqlite_stores(tmp_path)) as gw:
            assert (await gw.handle(chat("twice"))).header("x-aigw-cache") == "MISS"
            used = await quota_used(gw)
            request_trips()
            hit = await gw.handle(chat("twice"))
            assert hit.status == 200 and hit.header("x-aigw-cache") == "HIT"
            assert request_trips() == ["cache.db"]
            assert await quota_used(gw) == used == 705
        assert len(recorder.received) == 1


def _seen(response: GatewayResponse) -> tuple[Any, ...]:
    names = (
        "x-aigw-cache",
        "retry-after",
        "x-should-retry",
        "x-aigw-quota-remaining-tokens",
        "x-ratelimit-remaining-tokens",
        "x-ratelimit-reset-tokens",
        "x-aigw-tokens-consumed",
    )
    error = orjson.loads(response.body).get("error") if response.status != 200 else None
    return response.status, [response.header(name) for name in names], error


async def test_refusals_and_counts_are_those_of_stores_with_a_trip_each(tmp_path: Path) -> None:
    seen: dict[str, list[Any]] = {}
    with serve_recorders(1) as [(url, _)]:
        for name, stores in (
            ("memory", {"counters": "memory://", "cache": "memory://"}),
            ("sqlite", sqlite_stores(tmp_path)),
        ):
            async with gateway(url, stores) as gw:
                seen[name] = []
                for text in ("one", "two", "three", "one", "four"):
                    seen[name].append(_seen(await gw.handle(chat(text))))
                    seen[name].append(await quota_used(gw))
    assert seen["sqlite"] == seen["memory"]
    statuses = [entry[0] for entry in seen["sqlite"][::2]]
    assert statuses == [200, 200, 403, 200, 403]  # the third is refused; "one" again is a hit, never refused
    assert seen["sqlite"][-1] == 2 * 705


async def test_waiters_answered_by_the_leader_are_not_counted(tmp_path: Path) -> None:
    with serve_recorders(1) as [(url, recorder)]:
        recorder.gate = threading.Event()
        async with gateway(url, sqlite_stores(tmp_path)) as gw:
            calls = [asyncio.ensure_future(gw.handle(chat("once"))) for _ in range(5)]
            assert await asyncio.to_thread(recorder.arrived.wait, 30)  # the leader is at the backend, held
            recorder.gate.set()
            responses = await asyncio.gather(*calls)
            assert sorted(r.header("x-aigw-cache") or "" for r in responses) == ["HIT"] * 4 + ["MISS"]
            assert await quota_used(gw) == 705  # the leader's answer only; nothing reserved for the waiters stays
        assert len(recorder.received) == 1
