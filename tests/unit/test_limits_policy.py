"""Token limits through the whole pipeline, in-process, with a memory store and a clock the test moves."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import orjson
import pytest

from aigw.serve import BackgroundServers
from gateway_core.app import Gateway
from gateway_core.background import BackgroundTasks
from gateway_core.clock import ManualClock
from gateway_core.config import LimitRule, config_from_dict, sha256_hex
from gateway_core.context import GatewayRequest, GatewayResponse, Principal, RequestContext
from gateway_core.limits.rules import counter_value
from gateway_core.policies.settlements import Settlements
from gateway_core.simulator.app import SimulatorApp
from gateway_core.simulator.settings import SimConfig
from gateway_core.storage.memory import MemoryCounters
from gateway_core.storage.sqlite import SqliteCounters

ALICE = {"api-key": "alice-key"}
BOB = {"api-key": "bob-key"}
HELLO = [{"role": "user", "content": "hello"}]  # 8 prompt tokens in o200k_base with the chat framing
START = 1_795_000_040.0  # 20 s into a minute


@pytest.fixture(scope="module")
def sim() -> Iterator[tuple[str, SimulatorApp]]:
    servers = BackgroundServers()
    app = SimulatorApp(SimConfig(completion_tokens=10))
    port = servers.serve(app)
    yield f"http://127.0.0.1:{port}", app
    servers.stop()


def make_config(sim_url: str, rules: list[dict[str, Any]], **limits: Any) -> Any:
    return config_from_dict(
        {
            "backends": [
                {
                    "name": "sim",
                    "url": sim_url,
                    "auth": {"type": "none"},
                    "simulator": True,
                    "deployments": ["gpt-4o", "gpt-4o-mini"],
                }
            ],
            "keys": [
                {"name": "ka", "sha256": sha256_hex("alice-key"), "user": "alice", "tenant": "contoso"},
                {"name": "kb", "sha256": sha256_hex("bob-key"), "user": "bob", "tenant": "contoso"},
            ],
            "limits": {"rules": rules, **limits},
            "stores": {"counters": "memory://", "health": "memory://"},
        }
    )


@pytest.fixture
async def gateway_factory(sim: tuple[str, SimulatorApp]) -> AsyncIterator[Any]:
    made: list[Gateway] = []

    async def make(rules: list[dict[str, Any]], **limits: Any) -> tuple[Gateway, ManualClock]:
        clock = ManualClock(START)
        gateway = Gateway(make_config(sim[0], rules, **limits), clock=clock)
        await gateway.start()
        made.append(gateway)
        return gateway, clock

    yield make
    for gateway in made:
        await gateway.close()


async def call(gateway: Gateway, headers: dict[str, str], **body: Any) -> GatewayResponse:
    payload = {"model": "gpt-4o", "messages": HELLO, **body}
    raw = orjson.dumps(payload)
    return await gateway.handle(GatewayRequest("POST", "/v1/chat/completions", {}, headers, raw, len(raw)))


async def drain(response: GatewayResponse) -> list[bytes]:
    assert response.stream is not None
    return [chunk async for chunk in response.stream]


def store_of(gateway: Gateway) -> MemoryCounters:
    assert isinstance(gateway.counters, MemoryCounters)
    return gateway.counters


async def test_admits_reserves_and_settles_to_the_backends_usage(gateway_factory: Any) -> None:
    gateway, _ = await gateway_factory([{"name": "u-tpm", "key": "user", "tokens_per_minute": 1000}])
    response = await call(gateway, ALICE, max_tokens=50)
    assert response.status == 200
    usage = orjson.loads(response.body)["usage"]
    assert usage["prompt_tokens"] == 8 and usage["completion_tokens"] == 10
    assert response.header("x-aigw-tokens-consumed") == "18"
    assert response.header("x-ratelimit-limit-tokens") == "1000"
    assert response.header("x-ratelimit-remaining-tokens") == str(1000 - (8 + 50))  # the reservation, pre-settle
    await gateway.tasks.drain()
    assert await store_of(gateway).get("tpm:u-tpm:contoso/alice", 1_795_000_020) == 18
    second = await call(gateway, ALICE, max_tokens=50)
    assert second.header("x-ratelimit-remaining-tokens") == str(1000 - 18 - 58)


async def test_tpm_refusal_names_the_rule_and_says_when_to_retry(gateway_factory: Any) -> None:
    gateway, clock = await gateway_factory([{"name": "u-tpm", "key": "user", "tokens_per_minute": 200}])
    for _ in range(3):  # 3 x 58 reserved = 174; settled to 3 x 18 = 54 after the drain
        assert (await call(gateway, ALICE, max_tokens=50)).status == 200
    refused = await call(gateway, ALICE, max_tokens=150)  # 158 more would make 212 > 200
    assert refused.status == 429
    error = orjson.loads(refused.body)["error"]
    assert error["code"] == "tokens_per_minute_exceeded" and "u-tpm" in error["message"]
    # Nothing decays within this minute (no previous window): it fits once this window becomes the previous one
    # and has decayed by 12 tokens: 40 s to the boundary + 12 / (54/60) s.
    await gateway.tasks.drain()
    refused = await call(gateway, ALICE, max_tokens=150)
    assert refused.header("retry-after") == str(40 + 14)
    assert refused.header("retry-after-ms") == str(40_000 + 13_334)
    assert refused.header("x-ratelimit-remaining-tokens") == str(200 - 54)
    assert refused.header("x-should-retry") is None  # a rate limit: retrying later works
    assert (await call(gateway, BOB, max_tokens=150)).status == 200  # per user
    clock.advance(54)
    assert (await call(gateway, ALICE, max_tokens=150)).status == 200


async def test_prompt_bigger_than_the_limit_never_reaches_the_backend(
    gateway_factory: Any, sim: tuple[str, SimulatorApp]
) -> None:
    gateway, _ = await gateway_factory([{"name": "tiny", "key": "user", "tokens_per_minute": 30}])
    before = len(sim[1].requests)
    refused = await call(gateway, ALICE, messages=[{"role": "user", "content": "word " * 100}], max_tokens=1)
    assert refused.status == 429
    assert refused.header("x-should-retry") == "false"
    assert orjson.loads(refused.body)["error"]["code"] == "tokens_exceed_limit"
    assert len(sim[1].requests) == before
    assert store_of(gateway).round_trips == 0


@pytest.mark.parametrize("status", [403, 429])
async def test_quota_exhaustion_is_final_until_the_period_ends(gateway_factory: Any, status: int) -> None:
    gateway, clock = await gateway_factory(
        [{"name": "daily", "key": "tenant", "token_quota": 100, "quota_period": "daily"}], quota_exceeded_status=status
    )
    assert (await call(gateway, ALICE, max_tokens=40)).header("x-aigw-quota-remaining-tokens") == str(100 - 48)
    await gateway.tasks.drain()
    assert (await call(gateway, BOB, max_tokens=40)).status == 200  # same tenant: 18 + 48 reserved
    await gateway.tasks.drain()
    refused = await call(gateway, ALICE, max_tokens=70)
    assert refused.status == status
    assert refused.header("x-should-retry") == "false"
    assert orjson.loads(refused.body)["error"]["code"] == "quota_exceeded"
    seconds_to_midnight = 86400 - int(START % 86400)
    assert refused.header("retry-after") == str(seconds_to_midnight)
    clock.advance(seconds_to_midnight)
    assert (await call(gateway, ALICE, max_tokens=70)).status == 200


async def test_several_rules_apply_and_headers_show_the_tightest(gateway_factory: Any) -> None:
    gateway, _ = await gateway_factory(
        [
            {"name": "user-tpm", "key": "user", "tokens_per_minute": 5000},
            {"name": "tenant-tpm", "key": "tenant", "tokens_per_minute": 300, "tenants": ["contoso"]},
            {"name": "mini-only", "key": "user", "tokens_per_minute": 10, "deployments": ["gpt-4o-mini"]},
            {"name": "monthly", "key": "tenant", "token_quota": 10_000, "quota_period": "monthly"},
        ]
    )
    response = await call(gateway, ALICE, max_tokens=50)
    assert response.status == 200
    assert response.header("x-ratelimit-limit-tokens") == "300"
    assert response.header("x-ratelimit-remaining-tokens") == "242"
    assert response.header("x-aigw-quota-remaining-tokens") == str(10_000 - 58)
    # Admission: each rate reads the previous minute (once a minute), then one round trip adds to all three rules.
    assert store_of(gateway).round_trips == 2 + 1
    await gateway.tasks.drain()
    assert store_of(gateway).round_trips == 2 + 1 + 1  # settling: one round trip for the three rules
    assert (await call(gateway, ALICE, max_tokens=50)).status == 200
    assert store_of(gateway).round_trips == 2 + 1 + 1 + 1  # the same minute: admission is one round trip
    assert (await call(gateway, ALICE, model="gpt-4o-mini", max_tokens=50)).status == 429  # mini-only applies


async def test_settlements_of_concurrent_requests_are_coalesced_and_exact(gateway_factory: Any) -> None:
    gateway, _ = await gateway_factory(
        [
            {"name": "u-tpm", "key": "user", "tokens_per_minute": 100_000},
            {"name": "daily", "key": "tenant", "token_quota": 100_000, "quota_period": "daily"},
        ]
    )
    responses = await asyncio.gather(*(call(gateway, ALICE if i % 2 else BOB, max_tokens=50) for i in range(10)))
    assert [r.status for r in responses] == [200] * 10
    before = store_of(gateway).round_trips
    await gateway.tasks.drain()
    assert store_of(gateway).round_trips - before <= 2  # not 20 (two rules, ten requests); 1 unless the box is slow
    minute, day = int(START // 60 * 60), int(START // 86400 * 86400)
    assert await store_of(gateway).get("tpm:u-tpm:contoso/alice", minute) == 5 * 18
    assert await store_of(gateway).get("tpm:u-tpm:contoso/bob", minute) == 5 * 18
    assert await store_of(gateway).get("quota:daily:contoso", day) == 10 * 18


async def test_settlements_sum_what_waits_per_counter_and_write_it_in_one_round_trip() -> None:
    store, tasks = MemoryCounters(), BackgroundTasks()
    settlements = Settlements(store, tasks, interval_s=0.05)
    for i in range(100):
        settlements.add(f"tpm:u:{i % 3}", 60, -2, 180)
    settlements.add("quota:d:t", 0, 5, 90_000)
    settlements.add("quota:d:t", 0, -5, 90_000)  # sums to nothing: not written
    await settlements.flush()  # before the timer: it finds nothing left to write
    await tasks.drain()
    assert store.round_trips == 1
    assert [await store.get(f"tpm:u:{i}", 60) for i in range(3)] == [-68, -66, -66]
    assert await store.get("quota:d:t", 0) == 0 and store.round_trips == 1 + 4


async def test_a_refusal_by_one_rule_takes_back_every_rule_in_one_round_trip(gateway_factory: Any) -> None:
    gateway, _ = await gateway_factory(
        [
            {"name": "roomy", "key": "user", "tokens_per_minute": 5000},
            {"name": "daily", "key": "tenant", "token_quota": 100, "quota_period": "daily"},
        ]
    )
    assert (await call(gateway, ALICE, max_tokens=40)).status == 200  # 48 reserved in both
    await gateway.tasks.drain()  # settled to 18
    before = store_of(gateway).round_trips
    refused = await call(gateway, ALICE, max_tokens=80)  # 88 more: over the quota (18 + 88 > 100), not the rate
    assert orjson.loads(refused.body)["error"]["code"] == "quota_exceeded"
    assert store_of(gateway).round_trips == before + 2  # every rule added at once, then every rule taken back
    minute, day = int(START // 60 * 60), int(START // 86400 * 86400)
    assert await store_of(gateway).get("tpm:roomy:contoso/alice", minute) == 18
    assert await store_of(gateway).get("quota:daily:contoso", day) == 18


async def test_backend_errors_release_the_reservation(gateway_factory: Any) -> None:
    gateway, _ = await gateway_factory([{"name": "u", "key": "user", "tokens_per_minute": 1000}])
    failed = await call(gateway, {**ALICE, "x-aigw-sim-fault": "500"}, max_tokens=50)
    assert failed.status == 500
    assert failed.header("x-aigw-tokens-consumed") == "0"
    await gateway.tasks.drain()
    assert await store_of(gateway).get("tpm:u:contoso/alice", int(START // 60 * 60)) == 0


async def test_backend_ratelimit_headers_are_replaced(gateway_factory: Any) -> None:
    gateway, _ = await gateway_factory([{"name": "u", "key": "user", "tokens_per_minute": 1000}])
    response = await call(gateway, {**ALICE, "x-aigw-sim-fault": "429"}, max_tokens=50)
    assert response.status == 429  # the backend's own 429, passed through
    # The simulator said "x-ratelimit-remaining-tokens: 0"; the client sees aigw's count instead, once.
    assert [v for k, v in response.headers if k == "x-ratelimit-remaining-tokens"] == [str(1000 - 58)]


def events(chunks: list[bytes]) -> list[dict[str, Any]]:
    data = b"".join(chunks).split(b"\n\n")
    return [orjson.loads(e[6:]) for e in data if e.startswith(b"data: {")]


async def test_stream_settles_to_the_reported_usage_and_hides_the_chunk_it_asked_for(gateway_factory: Any) -> None:
    gateway, _ = await gateway_factory([{"name": "u", "key": "user", "tokens_per_minute": 1000}])
    received = events(await drain(await call(gateway, ALICE, stream=True, max_tokens=50)))
    assert received and all(e["choices"] for e in received)  # no usage chunk: the client did not ask
    assert all("usage" not in e or e["usage"] is None for e in received)
    await gateway.tasks.drain()
    assert await store_of(gateway).get("tpm:u:contoso/alice", 1_795_000_020) == 18  # the simulator's usage: 8 + 10

    asked = events(
        await drain(await call(gateway, ALICE, stream=True, max_tokens=50, stream_options={"include_usage": True}))
    )
    assert asked[-1]["choices"] == [] and asked[-1]["usage"]["total_tokens"] == 18


async def test_stream_cut_short_is_counted_from_the_text_that_passed(gateway_factory: Any) -> None:
    gateway, _ = await gateway_factory([{"name": "u", "key": "user", "tokens_per_minute": 1000}])
    response = await call(gateway, ALICE, stream=True, max_tokens=50)
    assert response.stream is not None
    first = await response.stream.__anext__()  # the role chunk and perhaps more: then the client hangs up
    await response.stream.aclose()  # type: ignore[attr-defined]
    await gateway.tasks.drain()
    counted = await store_of(gateway).get("tpm:u:contoso/alice", 1_795_000_020)
    passed = sum(len((c["choices"][0]["delta"].get("content") or "").split()) for c in events([first]))
    assert counted == 8 + passed  # prompt counted before the call, completion from the text that passed


async def test_old_api_versions_get_no_stream_options_and_are_counted_from_text(
    gateway_factory: Any, sim: tuple[str, SimulatorApp]
) -> None:
    gateway, _ = await gateway_factory([{"name": "u", "key": "user", "tokens_per_minute": 1000}])
    raw = orjson.dumps({"messages": HELLO, "stream": True, "max_tokens": 50})
    response = await gateway.handle(
        GatewayRequest(
            "POST", "/openai/deployments/gpt-4o/chat/completions", {"api-version": "2024-06-01"}, ALICE, raw, len(raw)
        )
    )
    assert sim[1].requests[-1]["query"]["api-version"] == "2024-06-01"
    await drain(response)
    await gateway.tasks.drain()
    assert await store_of(gateway).get("tpm:u:contoso/alice", 1_795_000_020) == 18


@pytest.mark.parametrize(("policy", "status"), [("fail_closed", 503), ("fail_open", 200)])
async def test_store_outage_follows_the_configured_policy(
    sim: tuple[str, SimulatorApp], tmp_path: Any, policy: str, status: int
) -> None:
    blocker = tmp_path / "not-a-dir"
    blocker.write_text("x")
    config = make_config(sim[0], [{"name": "u", "key": "user", "tokens_per_minute": 1000}], on_store_error=policy)
    config = config.model_copy(
        update={"stores": config.stores.model_copy(update={"counters": f"sqlite:///{blocker}/c.db"})}
    )
    gateway = Gateway(config, clock=ManualClock(START))
    await gateway.start()
    try:
        response = await call(gateway, ALICE, max_tokens=10)
        assert response.status == status
        if status == 503:
            assert orjson.loads(response.body)["error"]["code"] == "limits_store_unavailable"
    finally:
        await gateway.close()


async def test_settlements_waiting_at_shutdown_are_written_not_lost(
    sim: tuple[str, SimulatorApp], tmp_path: Path
) -> None:
    config = make_config(sim[0], [{"name": "u", "key": "user", "tokens_per_minute": 100_000}])
    config = config.model_copy(
        update={"stores": config.stores.model_copy(update={"counters": f"sqlite:///{tmp_path}/counters.db"})}
    )
    gateway = Gateway(config, clock=ManualClock(START))
    await gateway.start()
    responses = await asyncio.gather(*(call(gateway, ALICE, max_tokens=50) for _ in range(5)))
    assert [r.status for r in responses] == [200] * 5
    await gateway.close()  # straight away: the settlements (58 reserved, 18 used, each) still wait
    store = SqliteCounters(tmp_path / "counters.db")
    assert await store.get("tpm:u:contoso/alice", int(START // 60 * 60)) == 5 * 18
    await store.close()


@pytest.mark.parametrize(
    ("first", "second"),
    [(("contoso", "alice"), ("fabrikam", "alice")), (("a/b", "c"), ("a", "b/c")), (("a%2Fb", "c"), ("a/b", "c"))],
)
def test_a_user_counter_is_its_tenants_so_same_named_users_never_share_one(
    first: tuple[str, str], second: tuple[str, str]
) -> None:
    rule = LimitRule(name="u", key="user", tokens_per_minute=10)

    def value(tenant: str, user: str) -> str:
        ctx = RequestContext(GatewayRequest("POST", "/", {}, {}, b"", 0), "r", 0.0)
        ctx.principal = Principal(tenant=tenant, user=user, key_id="k")
        return counter_value(rule, ctx)

    assert value(*first) != value(*second)
    assert value("contoso", "alice") == "contoso/alice"
