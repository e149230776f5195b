from __future__ import annotations

import collections
import random

from gateway_core.clock import ManualClock
from gateway_core.config import config_from_dict
from gateway_core.routing.health import HealthView
from gateway_core.routing.pools import PoolTable
from gateway_core.routing.strategies import by_priority_then_weight


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


def test_health_view_follows_outcomes() -> None:
    clock = ManualClock()
    view = HealthView(clock, ["b"])
    assert view.snapshot("b")["state"] == "unknown"
    view.observe("b", status=200)
    assert view.snapshot("b")["state"] == "healthy"
    clock.advance(5)
    view.observe("b", status=None, error="connection refused")
    view.observe("b", status=503)
    snap = view.snapshot("b")
    assert snap["state"] == "failing" and snap["consecutive_failures"] == 2 and snap["last_error"] == "HTTP 503"
    assert snap["last_seen_unix_s"] == clock.now_s()
    view.observe("b", status=429)  # the backend answered: throttled, not down
    assert view.snapshot("b")["state"] == "healthy"
