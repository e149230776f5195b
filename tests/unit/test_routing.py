from __future__ import annotations

import collections
import random

import pytest

from gateway_core.catalogue import PoolTable
from gateway_core.clock import ManualClock
from gateway_core.config import Backend, BreakerSettings, DeploymentRef, config_from_dict
from gateway_core.routing.health import BreakerEvent, HealthView
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
    assert view.state("b") == "healthy" and view.acquire("b", "d")
    view.observe("b", "d", status=429, retry_after_s=2)
    assert view.state("b", "d") == "throttled" and not view.acquire("b", "d")
    clock.advance(2)
    assert view.acquire("b", "d")
    view.observe("b", "d", status=429, retry_after_s=500)
    assert view.throttled_for_s("b", "d") == 30  # capped
    view.observe("b", "d", status=429, retry_after_s=None)  # no usable header: throttle_s (10), but never shortened
    assert view.throttled_for_s("b", "d") == 30


def test_retry_after_ignored_when_not_accepted() -> None:
    clock = ManualClock()
    view = health(clock, accept_retry_after=False, throttle_s=4)
    view.observe("b", "d", status=429, retry_after_s=50)
    assert view.throttled_for_s("b", "d") == 4


def test_breaker_opens_after_failures_within_the_interval_then_half_opens_and_closes() -> None:
    clock = ManualClock()
    view = health(clock, failures=3, interval_s=10, trip_s=30)
    view.observe("b", "d", status=500)
    clock.advance(11)  # the first failure leaves the window
    view.observe("b", "d", status=503)
    view.observe("b", "d", status=None, error="connection refused")
    assert view.state("b") == "healthy"
    view.observe("b", "d", status=504)
    assert view.state("b") == "open" and not view.acquire("b", "d")
    clock.advance(30)
    assert view.state("b") == "half-open"
    assert view.acquire("b", "d")  # the one test request
    assert not view.acquire("b", "d")  # nobody else meanwhile
    view.observe("b", "d", status=200)
    assert view.state("b") == "healthy" and view.acquire("b", "d") and view.acquire("b", "d")


def test_a_failed_half_open_request_opens_the_breaker_again() -> None:
    clock = ManualClock()
    view = health(clock, failures=1, trip_s=5)
    view.observe("b", "d", status=500)
    clock.advance(5)
    assert view.acquire("b", "d")
    view.observe("b", "d", status=502)
    assert view.state("b") == "open" and view.snapshot("b")["open_until_unix_s"] == clock.now_s() + 5


def test_400s_are_not_failures_and_status_reports_rates() -> None:
    clock = ManualClock()
    view = health(clock, failures=1)
    view.observe("b", "d", status=400, latency_ms=12)
    view.observe("b", "d", status=200, latency_ms=8)
    view.observe("b", "d", status=500, latency_ms=30)
    snap = view.snapshot("b")
    assert snap["state"] == "open" and snap["recent_error_rate"] == round(1 / 3, 4)
    assert snap["recent_latency_p50_ms"] == 12


def test_shared_throttles_merge_the_later_deadline_per_deployment() -> None:
    clock = ManualClock()
    view = health(clock)
    view.merge_throttle("b", "d", clock.now_s() + 7)
    assert view.state("b", "d") == "throttled" and view.throttled_for_s("b", "d") == 7
    view.merge_throttle("b", "d", clock.now_s() + 3)
    assert view.throttled_for_s("b", "d") == 7
    assert view.state("b", "other") == "healthy"  # another deployment on the same backend is not throttled
    view.merge_throttle("unknown-backend", "d", clock.now_s() + 1)


def test_a_429_throttles_only_that_deployment_on_that_backend() -> None:
    clock = ManualClock()
    view = health(clock)
    view.observe("b", "d", status=429, retry_after_s=20)
    assert not view.acquire("b", "d")
    assert view.acquire("b", "other") and view.state("b") == "healthy"


def test_a_later_close_shared_by_another_instance_is_adopted_and_an_older_open_is_not() -> None:
    clock = ManualClock()
    view = health(clock, failures=1, trip_s=30)
    view.observe("b", "d", status=500)
    opened = view.breaker_event("b")
    assert view.state("b") == "open" and opened.open_until_s == clock.now_s() + 30
    clock.advance(1)
    view.merge_breaker("b", BreakerEvent(0.0, clock.now_s()))  # another instance's request succeeded since
    assert view.state("b") == "healthy" and view.acquire("b", "d")
    view.merge_breaker("b", opened)  # the sync reads the old open again: it stays closed
    assert view.state("b") == "healthy"
    clock.advance(60)
    view.merge_breaker("b", BreakerEvent(clock.now_s() - 1, clock.now_s() - 31))  # over already: no half-open
    assert view.state("b") == "healthy"


def test_a_probe_failure_counts_only_without_a_recent_live_success() -> None:
    clock = ManualClock()
    view = health(clock, failures=1, interval_s=10)
    view.observe("b", "d", status=200)
    view.observe_probe("b", status=500)
    view.observe_probe("b", status=None, error="connection refused")
    assert view.state("b") == "healthy"  # live traffic succeeded within the interval: the probe informs only
    assert view.snapshot("b")["probe"] == {
        "outcome": "connection refused",
        "counted_as_failure": False,
        "seen_unix_s": clock.now_s(),
    }
    clock.advance(11)
    view.observe_probe("b", status=503)
    assert view.state("b") == "open"


def test_a_probe_404_or_429_changes_nothing_and_a_probe_never_takes_the_half_open_slot() -> None:
    clock = ManualClock()
    view = health(clock, failures=1, trip_s=5)
    view.observe_probe("b", status=404)
    assert view.snapshot("b")["probe"]["outcome"] == "unsupported (HTTP 404)"
    view.observe_probe("b", status=429)
    assert view.state("b", "d") == "healthy" and view.throttled_for_s("b", "d") == 0
    view.observe("b", "d", status=500)
    clock.advance(5)
    assert view.state("b") == "half-open"
    for _ in range(3):
        view.observe_probe("b", status=500)  # failing probes neither reopen it nor hold its test slot
    assert view.state("b") == "half-open" and view.acquire("b", "d")
    view.observe("b", "d", status=200)
    assert view.state("b") == "healthy"


def test_a_slow_generation_is_neither_a_failure_nor_a_success() -> None:
    clock = ManualClock()
    view = health(clock, failures=1, trip_s=5)
    view.observe("b", "d", status=None, error="did not finish in time", counts=False)
    assert view.state("b") == "healthy"
    view.observe("b", "d", status=500)
    clock.advance(5)
    assert view.acquire("b", "d")
    view.observe("b", "d", status=None, error="stopped sending", counts=False)  # frees the test slot
    assert view.state("b") == "half-open" and view.acquire("b", "d")


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
