"""README claims about routing and health, through Gateway.handle and GET /status, against tests/upstream.py's
recorders and a clock the test moves.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import orjson
import pytest

from gateway_core.app import Gateway
from gateway_core.clock import ManualClock
from gateway_core.config import config_from_dict, sha256_hex
from gateway_core.context import GatewayRequest, GatewayResponse
from tests.inprocess import running
from tests.upstream import Recorder, serve_recorders

KEY = {"api-key": "route-key"}
ADMIN = {"api-key": "route-admin"}
REGIONS = ("eastus", "westeurope")
NOW = 1_795_000_000.0


@pytest.fixture(scope="module")
def recorders() -> Iterator[list[tuple[str, Recorder]]]:
    with serve_recorders(2) as made:
        yield made


@pytest.fixture(autouse=True)
def fresh(recorders: list[tuple[str, Recorder]]) -> None:
    for _, recorder in recorders:
        recorder.reset()


@asynccontextmanager
async def gateway(
    recorders: list[tuple[str, Recorder]],
    first_backend: dict[str, Any] | None = None,
    health_store: str = "memory://",
    clock: ManualClock | None = None,
    **routing: Any,
) -> AsyncIterator[Gateway]:
    """r0 (eastus, priority 0) and r1 (westeurope, priority 1); ``first_backend`` adds settings to r0."""
    backends = [
        {"name": f"r{i}", "url": url, "region": REGIONS[i], "priority": i, "auth": {"type": "none"}}
        | {"deployments": ["gpt-4o", "gpt-4o-mini"]}
        for i, (url, _) in enumerate(recorders)
    ]
    backends[0].update(first_backend or {})
    config = config_from_dict(
        {
            "backends": backends,
            "keys": [
                {"name": "k", "sha256": sha256_hex("route-key"), "user": "u"},
                {"name": "a", "sha256": sha256_hex("route-admin"), "user": "ops", "admin": True},
            ],
            "routing": {"probe": {"enabled": False}, "breaker": {"failures": 1000}, **routing},
            "stores": {"health": health_store},
        }
    )
    async with running(config, clock or ManualClock(NOW)) as gw:
        yield gw


async def chat(gw: Gateway, headers: dict[str, str] | None = None, model: str = "gpt-4o") -> GatewayResponse:
    raw = orjson.dumps({"model": model, "messages": [{"role": "user", "content": "hello"}]})
    return await gw.handle(
        GatewayRequest("POST", "/v1/chat/completions", {}, {**KEY, **(headers or {})}, raw, len(raw))
    )


async def status_of(gw: Gateway, backend: str) -> dict[str, Any]:
    body = orjson.loads((await gw.handle(GatewayRequest("GET", "/status", {}, ADMIN, b"", 0))).body)
    (found,) = [b for b in body["backends"] if b["name"] == backend]
    return dict(found["health"])


@pytest.mark.parametrize(("trusted", "expected"), [(True, "r1"), (False, "r0")])
async def test_x_forwarded_region_counts_only_when_trusted(
    recorders: list[tuple[str, Recorder]], trusted: bool, expected: str
) -> None:
    async with gateway(recorders, trust_forwarded_region=trusted) as gw:
        response = await chat(gw, {"x-forwarded-region": "westeurope"})
        assert response.header("x-aigw-backend") == expected
        # The region header itself always counts.
        assert (await chat(gw, {"x-user-region": "westeurope"})).header("x-aigw-backend") == "r1"


async def test_a_per_backend_breaker_override_applies_to_that_backend_only(
    recorders: list[tuple[str, Recorder]],
) -> None:
    for _, recorder in recorders:
        recorder.status = 500
    # routing.breaker says 1000 failures; r0's own breaker opens at the first.
    async with gateway(recorders, {"breaker": {"failures": 1, "trip_s": 30}}) as gw:
        await chat(gw)
        assert (await status_of(gw, "r0"))["state"] == "open"
        assert (await status_of(gw, "r1"))["state"] == "healthy"
        recorders[1][1].status = 200
        response = await chat(gw)
        assert response.header("x-aigw-backend") == "r1" and response.header("x-aigw-attempts") == "1"
    assert [len(r.received) for _, r in recorders] == [1, 2]


async def test_status_shows_open_half_open_healthy_and_throttled(recorders: list[tuple[str, Recorder]]) -> None:
    clock = ManualClock(NOW)
    async with gateway(recorders, {"breaker": {"failures": 1, "trip_s": 30}}, clock=clock) as gw:
        recorders[0][1].status = 500
        await chat(gw)
        opened = await status_of(gw, "r0")
        assert opened["state"] == "open" and opened["open_until_unix_s"] == NOW + 30
        assert opened["last_status"] == 500
        clock.advance(30)
        assert (await status_of(gw, "r0"))["state"] == "half-open"
        recorders[0][1].status = 200
        assert (await chat(gw)).header("x-aigw-backend") == "r0"  # the half-open test request succeeds
        assert (await status_of(gw, "r0"))["state"] == "healthy"
        recorders[0][1].status, recorders[0][1].retry_after_s = 429, 20
        assert (await chat(gw, model="gpt-4o-mini")).header("x-aigw-backend") == "r1"
        throttled = await status_of(gw, "r0")
        assert throttled["state"] == "healthy"  # a 429 throttles the deployment, not the backend
        assert throttled["throttled_deployments_until_unix_s"] == {"gpt-4o-mini": NOW + 30 + 20}


async def test_routing_survives_a_health_store_outage(recorders: list[tuple[str, Recorder]], tmp_path: Path) -> None:
    blocker = tmp_path / "not-a-dir"
    blocker.write_text("x")  # a file where the store's directory should be: every store call fails
    async with gateway(recorders, health_store=f"sqlite:///{blocker}/health.db") as gw:
        for _ in range(3):
            response = await chat(gw)
            assert response.status == 200 and response.header("x-aigw-backend") == "r0"
        await gw.sync_health()  # the sync fails quietly; routing reads only the local view
        assert (await chat(gw)).status == 200


async def test_a_throttle_seen_by_one_instance_is_adopted_by_another_through_the_store(
    recorders: list[tuple[str, Recorder]], tmp_path: Path
) -> None:
    clock = ManualClock(NOW)
    store = f"sqlite:///{tmp_path}/health.db"
    async with (
        gateway(recorders, health_store=store, clock=clock) as one,
        gateway(recorders, health_store=store, clock=clock) as two,
    ):
        recorders[0][1].status, recorders[0][1].retry_after_s = 429, 20
        assert (await chat(one)).header("x-aigw-backend") == "r1"  # r0 throttled gpt-4o, r1 answered
        await one.sync_health()
        await two.sync_health()
        response = await chat(two)
        assert response.header("x-aigw-backend") == "r1" and response.header("x-aigw-attempts") == "1"
    assert len(recorders[0][1].received) == 1  # the second instance never asked the throttled backend


async def test_an_idle_instance_adopts_anothers_throttle_on_its_own_schedule(
    recorders: list[tuple[str, Recorder]], tmp_path: Path
) -> None:
    # `aigw serve` syncs health in the background, so an instance that routes nothing still learns.
    store = f"sqlite:///{tmp_path}/health.db"
    backends = [
        {"name": f"r{i}", "url": url, "priority": i, "auth": {"type": "none"}, "deployments": ["gpt-4o"]}
        for i, (url, _) in enumerate(recorders)
    ]
    config = config_from_dict(
        {
            "backends": backends,
            "keys": [{"name": "k", "sha256": sha256_hex("route-key"), "user": "u"}],
            "routing": {"probe": {"enabled": False}, "sync_interval_s": 0.05},
            "stores": {"health": store},
        }
    )
    idle = Gateway(config, background_probes=True)
    await idle.start()
    try:
        async with running(config) as busy:
            recorders[0][1].status, recorders[0][1].retry_after_s = 429, 30
            assert (await chat(busy)).header("x-aigw-backend") == "r1"
            await busy.sync_health()  # published
        deadline = asyncio.get_running_loop().time() + 10
        while idle.health.throttled_for_s("r0", "gpt-4o") <= 0:  # adopted without a request of its own
            assert asyncio.get_running_loop().time() < deadline, "the idle instance never adopted the throttle"
            await asyncio.sleep(0.02)
    finally:
        await idle.close()
