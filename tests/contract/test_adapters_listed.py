"""The contract suite covers every adapter the factory can open, port by port."""

from __future__ import annotations

from gateway_core.storage import factory
from tests.contract.conftest import ADAPTERS


def test_every_adapter_of_every_port_is_under_contract() -> None:
    assert set(ADAPTERS["counters"]) == set(factory.COUNTERS)
    assert set(ADAPTERS["cache"]) == set(factory.CACHES)
    assert set(ADAPTERS["health"]) == set(factory.HEALTH)
    assert set(ADAPTERS["usage"]) == set(factory.USAGE) == set(factory.USAGE_QUEUES)
