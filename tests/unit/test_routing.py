from __future__ import annotations

import collections
import random

import pytest

from gateway_core.clock import ManualClock
from gateway_core.config import Backend, BreakerSettings, DeploymentRef, config_from_dict
from gateway_core.routing.health import HealthView
from gateway_core.routing.pools import PoolTable
from gateway_core.routing.retry_after import retry_after_s
from gateway_core.routing.strategies import by_priority_then_weight, region_first


def pools() -> PoolTable:
    def backend(name: str, priority: int, weight: int) -> dict[str, object]:
        return {"name": name, "url": "http://h", "priority": priority, "weight": weight, "deployments": ["gpt-4o"]}

    return PoolTable(config_from_dict({"backends": [backend("late", 2, 1), backend("a", 1, 3), backend("b", 1, 1)]}))


def test_lower_priority_number_always_comes_first() -> None:
    rng = random.Random(1)
    for _ in range(200):
        order = [t.backend.name for t in by_priority_then_weight(pools().targets("gpt-4o"), rng)]
        assert order[-1] == "late"
        assert sorted(order[:2]) == ["a", "b"]


def test_weights_share_traffic_within_a_priority() -> None:
    rng = random.Random(7)
    table = pools()
    firsts = collections.Counter(
        by_priority_then_weight(table.targets("gpt-4o"), rng)[0].backend.name for _ in range(8000)
    )
    assert 0.72 < firsts["a"] / 8000 < 0.78  # weight 3 of 4


def test_wildcard_backend_serves_any_name_unchanged() -> None:
    table = PoolTable(config_from_dict({"backends": [{"name": "w", "url": "http://h", "deployments": ["*"]}]}))
    (target,) = table.targets("whatever-you-like")
    assert target.upstream_name == "whatever-you-like"
    table.check_exists("anything")


def health(clock: ManualClock, **breaker: object) -> HealthView:
    backend = Backend(name="b", url="http://h", deployments=(DeploymentRef(name="d"),))
    return HealthView(clock, [backend], BreakerSettings.model_validate(breaker))


def test_a_429_keeps_the_backend_out_for_its_retry_after_capped() -> None:
    clock = ManualClock()
    view = health(clock, max_retry_after_s=30)
    assert view.state("b") == "healthy" and view.acquire("b")
    view.observe("b", status=429, retry_after_s=2)
    assert view.state("b") == "throttled" and not view.acquire("b")
    clock.advance(2)
    assert view.acquire("b")
    view.observe("b", status=429, retry_after_s=500)
    assert view.throttled_for_s("b") == 30  # capped
    view.observe("b", status=429, retry_after_s=None)  # no usable header: throttle_s (10), but never shortened
    assert view.throttled_for_s("b") == 30


def test_retry_after_ignored_when_not_accepted() -> None:
    clock = ManualClock()
    view = health(clock, accept_retry_after=False, throttle_s=4)
    view.observe("b", status=429, retry_after_s=50)
    assert view.throttled_for_s("b") == 4


def test_breaker_opens_after_failures_within_the_interval_then_half_opens_and_closes() -> None:
    clock = ManualClock()
    view = health(clock, failures=3, interval_s=10, trip_s=30)
    view.observe("b", status=500)
    clock.advance(11)  # the first failure leaves the window
    view.observe("b", status=503)
    view.observe("b", status=None, error="connection refused")
    assert view.state("b") == "healthy"
    view.observe("b", status=504)
    assert view.state("b") == "open" and not view.acquire("b")
    clock.advance(30)
    assert view.state("b") == "half-open"
    assert view.acquire("b")  # the one test request
    assert not view.acquire("b")  # nobody else meanwhile
    view.observe("b", status=200)
    assert view.state("b") == "healthy" and view.acquire("b") and view.acquire("b")


def test_a_failed_half_open_request_opens_the_breaker_again() -> None:
    clock = ManualClock()
    view = health(clock, failures=1, trip_s=5)
    view.observe("b", status=500)
    clock.advance(5)
    assert view.acquire("b")
    view.observe("b", status=502)
    assert view.state("b") == "open" and view.snapshot("b")["open_until_unix_s"] == clock.now_s() + 5


def test_400s_are_not_failures_and_status_reports_rates() -> None:
    clock = ManualClock()
    view = health(clock, failures=1)
    view.observe("b", status=400, latency_ms=12)
    view.observe("b", status=200, latency_ms=8)
    view.observe("b", status=500, latency_ms=30)
    snap = view.snapshot("b")
    assert snap["state"] == "open" and snap["recent_error_rate"] == round(1 / 3, 4)
    assert snap["recent_latency_p50_ms"] == 12


def test_shared_state_merges_the_later_deadline() -> None:
    clock = ManualClock()
    view = health(clock)
    view.merge("b", {"throttled_until_s": clock.now_s() + 7, "open_until_s": 0})
    assert view.state("b") == "throttled" and view.throttled_for_s("b") == 7
    view.merge("b", {"throttled_until_s": clock.now_s() + 3, "open_until_s": clock.now_s() + 20})
    assert view.state("b") == "open" and view.throttled_for_s("b") == 7
    view.merge("unknown-backend", {"throttled_until_s": 1})


@pytest.mark.parametrize(
    ("headers", "expected"),
    [
        ([("retry-after-ms", "1500"), ("retry-after", "9")], 1.5),
        ([("Retry-After", "7")], 7.0),
        ([("retry-after", "Wed, 21 Oct 2015 07:28:10 GMT")], 10.0),
        ([("x-ratelimit-reset-tokens", "6m0s"), ("x-ratelimit-reset-requests", "20ms")], 360.0),
        ([("x-ratelimit-reset-requests", "1.5s")], 1.5),
        ([("retry-after", "soon")], None),
        ([], None),
    ],
)
def test_retry_after_from_any_header(headers: list[tuple[str, str]], expected: float | None) -> None:
    now = 1445412480.0  # 10 s before the HTTP date above
    assert retry_after_s(headers, now) == expected


def test_region_first_keeps_order_within_and_ignores_unknown_regions() -> None:
    def backend(name: str, region: str) -> dict[str, object]:
        return {"name": name, "url": "http://h", "region": region, "deployments": ["d"]}

    table = PoolTable(
        config_from_dict({"backends": [backend("e1", "eastus"), backend("w1", "westeurope"), backend("e2", "eastus")]})
    )
    ordered = table.targets("d")
    assert [t.backend.name for t in region_first(ordered, "WestEurope")] == ["w1", "e1", "e2"]
    assert [t.backend.name for t in region_first(ordered, "mars")] == ["e1", "w1", "e2"]
    assert [t.backend.name for t in region_first(ordered, None)] == ["e1", "w1", "e2"]
