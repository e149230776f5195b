"""Routing across three simulated regions through the whole pipeline, with a clock the test moves."""

from __future__ import annotations

import asyncio
import collections
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import httpx
import orjson
import pytest

from aigw.serve import BackgroundServers
from gateway_core.app import Gateway
from gateway_core.clock import ManualClock
from gateway_core.config import GatewayConfig, StoreSettings, config_from_dict, sha256_hex
from gateway_core.context import GatewayRequest, GatewayResponse
from gateway_core.simulator.app import SimulatorApp
from gateway_core.simulator.settings import SimConfig
from tests.inprocess import running

KEY = {"api-key": "k"}
REGIONS = (("east", "eastus", 1, 3), ("west", "westeurope", 1, 1), ("south", "southindia", 2, 1))


@pytest.fixture(scope="module")
def sims() -> Iterator[dict[str, str]]:
    servers = BackgroundServers()
    urls = {
        name: f"http://127.0.0.1:{servers.serve(SimulatorApp(SimConfig(region=region)))}"
        for name, region, _, _ in REGIONS
    }
    yield urls
    servers.stop()


@pytest.fixture(autouse=True)
def healthy(sims: dict[str, str]) -> None:
    for url in sims.values():
        set_faults(url, [])
        clear_requests(url)


def set_faults(url: str, faults: list[dict[str, Any]]) -> None:
    assert httpx.post(url + "/++/config", json={"faults": faults}).status_code == 200


def clear_requests(url: str) -> None:
    # Plain blocking calls are fine here: the simulators run on their own thread's event loop.
    httpx.delete(url + "/_sim/requests")


def requests_seen(url: str) -> int:
    return len(httpx.get(url + "/_sim/requests").json()["requests"])


def gateway_config(sims: dict[str, str], **routing: Any) -> GatewayConfig:
    return config_from_dict(
        {
            "backends": [
                {
                    "name": name,
                    "url": sims[name],
                    "region": region,
                    "priority": priority,
                    "weight": weight,
                    "auth": {"type": "none"},
                    "simulator": True,  # steered with x-aigw-sim-* headers
                    "deployments": ["gpt-4o", "gpt-4o-mini"],
                }
                for name, region, priority, weight in REGIONS
            ],
            "keys": [
                {"name": "k", "sha256": sha256_hex("k"), "user": "u"},
                {"name": "admin", "sha256": sha256_hex("admin"), "user": "ops", "admin": True},
            ],
            "routing": {"max_attempts": 3, "breaker": {"failures": 5, "interval_s": 10, "trip_s": 30}, **routing},
            "stores": {"health": "memory://"},
        }
    )


@pytest.fixture
async def gateway(sims: dict[str, str]) -> AsyncIterator[tuple[Gateway, ManualClock]]:
    clock = ManualClock(time.time())
    async with running(gateway_config(sims), clock) as gw:
        yield gw, clock


async def call(
    gw: Gateway, headers: dict[str, str] | None = None, model: str = "gpt-4o", **body: Any
) -> GatewayResponse:
    raw = orjson.dumps({"model": model, "messages": [{"role": "user", "content": "hi"}], **body})
    return await gw.handle(
        GatewayRequest("POST", "/v1/chat/completions", {}, {**KEY, **(headers or {})}, raw, len(raw))
    )


async def test_weights_within_a_priority_over_2000_requests(gateway: tuple[Gateway, ManualClock]) -> None:
    gw, _ = gateway
    counts: collections.Counter[str] = collections.Counter()
    for _ in range(40):
        responses = await asyncio.gather(*(call(gw) for _ in range(50)))
        counts.update(r.header("x-aigw-backend") or "" for r in responses)
    assert counts["south"] == 0  # priority 2: only when priority 1 cannot serve
    assert abs(counts["east"] / 2000 - 0.75) < 0.05 and abs(counts["west"] / 2000 - 0.25) < 0.05


async def test_region_header_picks_that_region_first(gateway: tuple[Gateway, ManualClock]) -> None:
    gw, _ = gateway
    for _ in range(20):
        assert (await call(gw, {"x-user-region": "southindia"})).header("x-aigw-backend") == "south"
    assert (await call(gw, {"x-user-region": "atlantis"})).header("x-aigw-backend") in ("east", "west")


async def test_a_429_with_retry_after_takes_the_backend_out_for_that_long(
    gateway: tuple[Gateway, ManualClock], sims: dict[str, str]
) -> None:
    gw, clock = gateway
    set_faults(sims["east"], [{"kind": "429", "retry_after_s": 2}])
    set_faults(sims["west"], [{"kind": "429", "retry_after_s": 2}])
    response = await call(gw)
    assert response.status == 200 and response.header("x-aigw-backend") == "south"
    assert response.header("x-aigw-attempts") == "3"
    set_faults(sims["east"], [])
    set_faults(sims["west"], [])
    before = requests_seen(sims["east"]) + requests_seen(sims["west"])
    for _ in range(10):
        assert (await call(gw)).header("x-aigw-backend") == "south"  # both still out: nobody asks them
    assert requests_seen(sims["east"]) + requests_seen(sims["west"]) == before
    clock.advance(2)
    assert (await call(gw)).header("x-aigw-backend") in ("east", "west")


async def test_breaker_opens_after_five_failures_then_half_opens_and_recovers(
    gateway: tuple[Gateway, ManualClock], sims: dict[str, str]
) -> None:
    gw, clock = gateway
    set_faults(sims["east"], [{"kind": "500"}])
    clear_requests(sims["east"])
    while gw.health.state("east") != "open":
        response = await call(gw, {"x-user-region": "eastus"})
        assert response.status == 200 and response.header("x-aigw-backend") != "east"  # failed over
    assert gw.health.snapshot("east")["recent_error_rate"] == 1.0
    seen = requests_seen(sims["east"])
    assert seen == 5
    for _ in range(5):
        assert (await call(gw, {"x-user-region": "eastus"})).header("x-aigw-backend") != "east"
    assert requests_seen(sims["east"]) == seen  # open: no traffic
    clock.advance(30)
    assert gw.health.state("east") == "half-open"
    await call(gw, {"x-user-region": "eastus"})  # the test request fails: open again
    assert gw.health.state("east") == "open" and requests_seen(sims["east"]) == seen + 1
    set_faults(sims["east"], [])
    clock.advance(30)
    assert (await call(gw, {"x-user-region": "eastus"})).header("x-aigw-backend") == "east"
    assert gw.health.state("east") == "healthy"


async def test_a_stream_fails_over_before_its_first_byte(
    gateway: tuple[Gateway, ManualClock], sims: dict[str, str]
) -> None:
    gw, _ = gateway
    set_faults(sims["east"], [{"kind": "503"}])
    response = await call(gw, {"x-user-region": "eastus"}, stream=True)
    assert response.status == 200 and response.header("x-aigw-backend") != "east"
    assert response.stream is not None
    body = b"".join([chunk async for chunk in response.stream])
    assert body.endswith(b"data: [DONE]\n\n")


async def test_a_stream_broken_after_its_first_byte_ends_with_an_error_event(
    gateway: tuple[Gateway, ManualClock], sims: dict[str, str]
) -> None:
    gw, _ = gateway
    set_faults(sims["east"], [{"kind": "drop"}])
    response = await call(gw, {"x-user-region": "eastus"}, stream=True)
    assert response.status == 200 and response.header("x-aigw-backend") == "east"
    assert response.stream is not None
    events = b"".join([chunk async for chunk in response.stream]).split(b"\n\n")
    last = [e for e in events if e.startswith(b"data: ")][-1]
    assert orjson.loads(last[6:])["error"]["code"] == "backend_unreachable"


async def test_everything_down_answers_503_after_the_last_resort_tries(
    gateway: tuple[Gateway, ManualClock], sims: dict[str, str]
) -> None:
    gw, _ = gateway
    for url in sims.values():
        set_faults(url, [{"kind": "500"}])
    for _ in range(5):
        await call(gw)  # 3 attempts each: opens the breakers
    assert all(gw.health.state(name) == "open" for name in sims)
    response = await call(gw)
    assert response.status == 503
    error = orjson.loads(response.body)["error"]
    assert error["code"] == "no_backend_available"
    assert response.header("x-aigw-attempts") == "3"  # the last-resort tries, each failed at once
    # Backend names and states are for admin keys, as on /status.
    assert error["message"] == "No backend for 'gpt-4o' is available right now."
    admin = orjson.loads((await call(gw, {"api-key": "admin"})).body)["error"]
    assert admin["code"] == "no_backend_available" and all(f"{name}: open" in admin["message"] for name in sims)


async def test_when_every_breaker_is_open_a_recovered_backend_is_still_found(
    gateway: tuple[Gateway, ManualClock], sims: dict[str, str]
) -> None:
    gw, _ = gateway
    for url in sims.values():
        set_faults(url, [{"kind": "500"}])
    for _ in range(5):
        await call(gw)
    assert all(gw.health.state(name) == "open" for name in sims)
    set_faults(sims["south"], [])  # south recovers while every breaker is still open
    response = await call(gw)
    assert response.status == 200 and response.header("x-aigw-backend") == "south"
    assert gw.health.state("south") == "healthy"  # the success closed its breaker
    assert gw.health.state("east") == "open"


async def test_everything_throttled_answers_429_with_the_soonest_retry_after(
    gateway: tuple[Gateway, ManualClock], sims: dict[str, str]
) -> None:
    gw, _ = gateway
    for name, seconds in (("east", 20), ("west", 9), ("south", 30)):
        set_faults(sims[name], [{"kind": "429", "retry_after_s": seconds}])
    first = await call(gw)
    assert first.status == 429 and first.header("retry-after") == "9"  # the backends' answer, soonest wait
    again = await call(gw)
    assert again.status == 429 and again.header("retry-after") == "9"
    assert orjson.loads(again.body)["error"]["code"] == "all_backends_throttled"


async def test_client_errors_are_not_retried(gateway: tuple[Gateway, ManualClock], sims: dict[str, str]) -> None:
    gw, _ = gateway
    raw = b'{"model": "gpt-4o", "input": {"not": "text"}}'  # the backend answers 400
    response = await gw.handle(GatewayRequest("POST", "/v1/embeddings", {}, KEY, raw, len(raw)))
    assert response.status == 400 and response.header("x-aigw-attempts") == "1"
    assert sum(requests_seen(u) for u in sims.values()) == 1


async def test_trying_one_half_open_backend_leaves_the_others_test_slots_free(
    gateway: tuple[Gateway, ManualClock], sims: dict[str, str]
) -> None:
    gw, clock = gateway
    for name in ("east", "west"):
        set_faults(sims[name], [{"kind": "500"}])
    while gw.health.state("east") != "open" or gw.health.state("west") != "open":
        await call(gw)
    for name in ("east", "west"):
        set_faults(sims[name], [])
    clock.advance(30)
    assert gw.health.state("east") == gw.health.state("west") == "half-open"
    assert (await call(gw, {"x-user-region": "eastus"})).header("x-aigw-backend") == "east"
    assert (await call(gw, {"x-user-region": "westeurope"})).header("x-aigw-backend") == "west"
    assert gw.health.state("east") == gw.health.state("west") == "healthy"


async def test_a_429_on_one_deployment_leaves_the_others_on_that_backend_in_rotation(
    gateway: tuple[Gateway, ManualClock],
) -> None:
    gw, _ = gateway
    throttle = {"x-aigw-sim-fault": "429", "x-aigw-sim-retry-after": "20", "x-user-region": "eastus"}
    assert (await call(gw, throttle)).status == 429  # gpt-4o throttled on all three
    again = await call(gw, {"x-user-region": "eastus"})
    assert again.status == 429 and orjson.loads(again.body)["error"]["code"] == "all_backends_throttled"
    other = await call(gw, {"x-user-region": "eastus"}, model="gpt-4o-mini")
    assert other.status == 200 and other.header("x-aigw-backend") == "east"  # Azure limits are per deployment


async def test_when_every_eligible_backend_fails_an_open_breaker_is_tried_before_giving_up(
    gateway: tuple[Gateway, ManualClock], sims: dict[str, str]
) -> None:
    gw, _ = gateway
    set_faults(sims["south"], [{"kind": "500"}])
    while gw.health.state("south") != "open":
        assert (await call(gw, {"x-user-region": "southindia"})).status == 200  # fails over from south
    set_faults(sims["south"], [])  # south recovers behind its open breaker; the primaries fail
    for name in ("east", "west"):
        set_faults(sims[name], [{"kind": "500"}])
    response = await call(gw)
    assert response.status == 200 and response.header("x-aigw-backend") == "south"
    assert response.header("x-aigw-attempts") == "3"
    assert gw.health.state("south") == "healthy"


async def test_a_breaker_closed_by_one_instance_is_adopted_by_another_and_never_reopened_by_a_sync(
    sims: dict[str, str], tmp_path: Path
) -> None:
    clock = ManualClock(time.time())
    config = gateway_config(sims).model_copy(update={"stores": StoreSettings(health=f"sqlite:///{tmp_path}/health.db")})
    async with running(config, clock) as one, running(config, clock) as two:
        set_faults(sims["east"], [{"kind": "500"}])
        while one.health.state("east") != "open":
            await call(one, {"x-user-region": "eastus"})
        await one.sync_health()
        await two.sync_health()
        assert two.health.state("east") == "open"
        set_faults(sims["east"], [])
        for name in ("west", "south"):
            set_faults(sims[name], [{"kind": "500"}])
        clock.advance(1)
        response = await call(one)  # only east answers: a last-resort try closes its breaker
        assert response.header("x-aigw-backend") == "east" and one.health.state("east") == "healthy"
        await one.sync_health()
        await two.sync_health()
        await one.sync_health()
        assert one.health.state("east") == "healthy"  # the sync did not reopen it
        assert two.health.state("east") == "healthy"  # and the other instance adopted the close


async def test_a_stream_broken_after_its_status_line_counts_against_the_breaker(
    gateway: tuple[Gateway, ManualClock], sims: dict[str, str]
) -> None:
    gw, _ = gateway
    set_faults(sims["east"], [{"kind": "drop"}])
    for _ in range(5):
        response = await call(gw, {"x-user-region": "eastus"}, stream=True)
        assert response.status == 200 and response.header("x-aigw-backend") == "east" and response.stream
        b"".join([chunk async for chunk in response.stream])
    assert gw.health.state("east") == "open"


async def test_a_502_says_how_many_tries_it_cost_and_names_no_host_or_port(
    gateway: tuple[Gateway, ManualClock], sims: dict[str, str]
) -> None:
    gw, _ = gateway
    for url in sims.values():
        set_faults(url, [{"kind": "drop"}])
    response = await call(gw)
    assert response.status == 502 and response.header("x-aigw-attempts") == "3"
    message = orjson.loads(response.body)["error"]["message"]
    assert "127.0.0.1" not in message and not any(url.rsplit(":", 1)[1] in message for url in sims.values())


async def test_a_generation_slower_than_the_budget_does_not_open_the_breaker(sims: dict[str, str]) -> None:
    clock = ManualClock(time.time())
    async with running(gateway_config(sims, budget_s=0.3), clock) as gw:
        set_faults(sims["east"], [{"kind": "slow", "extra_latency_ms": 1500}])
        for _ in range(6):  # east runs out of the (manual clock's) budget each time; west answers
            assert (await call(gw, {"x-user-region": "eastus"})).header("x-aigw-attempts") == "2"
        assert gw.health.state("east") == "healthy"


async def test_probes_inform_and_live_traffic_decides(
    gateway: tuple[Gateway, ManualClock], sims: dict[str, str]
) -> None:
    gw, _ = gateway
    assert (await call(gw, {"x-user-region": "eastus"})).header("x-aigw-backend") == "east"
    set_faults(sims["east"], [{"kind": "500"}])
    for _ in range(6):
        await gw.prober.probe_all()  # failing probes, but live traffic just succeeded there
    assert gw.health.state("east") == "healthy"
    set_faults(sims["east"], [{"kind": "429", "retry_after_s": 20}])
    await gw.prober.probe_all()  # the probe's own 429 throttles nothing
    set_faults(sims["east"], [])
    assert (await call(gw, {"x-user-region": "eastus"})).header("x-aigw-backend") == "east"


async def test_a_probe_answered_404_does_not_close_a_failing_backends_breaker(sims: dict[str, str]) -> None:
    clock = ManualClock(time.time())
    async with running(gateway_config(sims, probe={"path": "/no-such-probe"}), clock) as gw:
        set_faults(sims["east"], [{"kind": "500"}])
        while gw.health.state("east") != "open":
            await call(gw, {"x-user-region": "eastus"})
        clock.advance(30)
        await gw.prober.probe_all()
        assert gw.health.snapshot("east")["probe"]["outcome"] == "unsupported (HTTP 404)"
        assert gw.health.state("east") == "half-open"  # the probe proved nothing: a live request tests it
