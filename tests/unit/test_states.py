"""The enums that name states keep the strings clients, logs and stores saw before they were enums."""

from __future__ import annotations

import orjson

from gateway_core.context import CacheStatus, UsageSource
from gateway_core.limits.rules import LimitKind
from gateway_core.routing.health import HealthState


def test_state_values_are_the_strings_on_the_wire() -> None:
    assert [s.value for s in CacheStatus] == ["", "HIT", "SEMANTIC-HIT", "MISS", "BYPASS"]
    assert [s.value for s in UsageSource] == ["", "backend", "counted", "cache"]
    assert [s.value for s in LimitKind] == ["tpm", "quota", "cost"]
    assert [s.value for s in HealthState] == ["healthy", "throttled", "open", "half-open", "unknown"]


def test_states_serialise_as_their_plain_strings() -> None:
    # JSON (/status), header values (encoded by the host adapter) and f-strings (messages, counter keys).
    assert orjson.dumps({"state": HealthState.HALF_OPEN}) == b'{"state":"half-open"}'
    assert CacheStatus.SEMANTIC_HIT.encode("latin-1") == b"SEMANTIC-HIT"
    assert f"{LimitKind.TPM}:rule" == "tpm:rule" and f"{UsageSource.NONE}" == ""
