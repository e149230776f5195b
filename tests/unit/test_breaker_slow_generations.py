"""One client's slow non-stream generations must not open a working backend's breaker for everyone.

A non-stream answer's status line comes only when the generation ends, so a per-try read timeout before it
looks like a dead backend. It counts against the breaker only while live traffic to that backend has had no
success within the breaker's interval (a hung backend still trips).
"""

from __future__ import annotations

import time
from typing import Any

from gateway_core.clock import ManualClock
from gateway_core.config import GatewayConfig, config_from_dict
from tests.inprocess import running
from tests.unit.test_failover import call, gateway_config, healthy, set_faults, sims

__all__ = ["healthy", "sims"]  # the fixtures, shared with test_failover.py

EAST = {"x-user-region": "eastus"}


def with_east_timeout(sims: dict[str, str], timeout_s: float) -> GatewayConfig:
    data: dict[str, Any] = gateway_config(sims).model_dump(mode="json")
    for backend in data["backends"]:
        if backend["name"] == "east":
            backend["timeout_s"] = timeout_s
    return config_from_dict(data)


async def test_read_timeouts_while_the_backend_serves_others_do_not_open_its_breaker(sims: dict[str, str]) -> None:
    clock = ManualClock(time.time())
    # Per-try timeout 0.3 s, budget 60 s: the timeout, not the budget, cuts each try.
    async with running(with_east_timeout(sims, 0.3), clock) as gw:
        assert (await call(gw, EAST)).header("x-aigw-backend") == "east"  # live traffic succeeds there
        set_faults(sims["east"], [{"kind": "slow", "extra_latency_ms": 1500}])  # this client's long generations
        for _ in range(6):  # more than the breaker's 5 failures
            response = await call(gw, EAST)
            assert response.status == 200 and response.header("x-aigw-attempts") == "2"  # failed over to west
        assert gw.health.state("east") == "healthy"


async def test_read_timeouts_on_a_backend_without_recent_successes_still_open_its_breaker(
    sims: dict[str, str],
) -> None:
    clock = ManualClock(time.time())
    async with running(with_east_timeout(sims, 0.3), clock) as gw:
        assert (await call(gw, EAST)).header("x-aigw-backend") == "east"
        set_faults(sims["east"], [{"kind": "slow", "extra_latency_ms": 1500}])  # hung from now on
        clock.advance(11)  # past the breaker's 10 s interval: the success is no longer recent
        for _ in range(5):
            assert (await call(gw, EAST)).status == 200
        assert gw.health.state("east") == "open"
