"""The cheap paths of a record's day, stored bytes and path give exactly what the general ones gave."""

from __future__ import annotations

import random
from datetime import UTC, datetime

import orjson

from gateway_core.policies.usage import _CONTROL, _recorded_path
from gateway_core.usage.record import UNAUTHENTICATED, UsageRecord, record_from_dict, record_to_dict, utc_day


def reference_day(time_s: float) -> str:
    return datetime.fromtimestamp(time_s, UTC).strftime("%Y-%m-%d")


def test_the_day_is_datetimes_including_around_midnight() -> None:
    rng = random.Random(11)
    times = [rng.uniform(-1e9, 4e9) for _ in range(20_000)]
    # datetime rounds to the microsecond: half a microsecond before midnight is the next day.
    offsets = (0.0, 1e-7, 4e-7, 5e-7, 6e-7, -4e-7, -5e-7, -6e-7, 0.0009, 0.001, 0.0011, -0.001, -0.0011, 1.0, -1.0)
    times += [day * 86400 + offset for day in range(-400, 25_000, 13) for offset in offsets]
    assert [utc_day(t) for t in times] == [reference_day(t) for t in times]
    assert utc_day(1_764_115_199.9999996) == "2025-11-26"  # rounds up to midnight, as datetime does


def test_a_record_is_stored_as_the_bytes_of_its_dict() -> None:
    full = UsageRecord(
        record_id="r" * 32,
        time_s=1_764_130_000.123456,
        request_id="client-chosen ünïcode",
        tenant="t",
        user="u",
        key_id="k",
        method="POST",
        path="/openai/deployments/gpt-4o/chat/completions",
        status=200,
        deployment="gpt-4o",
        model="gpt-4o",
        backend="b",
        region="eastus",
        stream=True,
        prompt_tokens=10,
        completion_tokens=20,
        cached_prompt_tokens=3,
        reasoning_tokens=4,
        token_source="backend",
        cost_micro_usd=123,
        cache="MISS",
        saved_tokens=0,
        saved_micro_usd=None,
        attempts=2,
        ttfb_ms=1.25,
        latency_ms=10.5,
        limit_rule=None,
        error_code=None,
        internal=False,
        maybe_billed_tokens=7,
    )
    refusal = UsageRecord("x" * 32, 60.0, "", UNAUTHENTICATED, UNAUTHENTICATED, None, "", "", 401, client_ip="::1")
    for record in (full, refusal):
        assert orjson.dumps(record) == orjson.dumps(record_to_dict(record))
        assert record_from_dict(orjson.loads(orjson.dumps(record))) == record


def test_a_recorded_path_escapes_control_characters_as_before() -> None:
    rng = random.Random(7)
    alphabet = ["a", "/", "%", " ", "\x00", "\x1b", "\x1f", "\x7f", "\x85", "\x9f", "\xa0", "\u200b", "é", "\u2028"]
    for _ in range(20_000):
        path = "".join(rng.choice(alphabet) for _ in range(rng.randint(0, 30)))
        assert _recorded_path(path) == _CONTROL.sub(lambda m: f"%{ord(m.group()):02X}", path)[:512]
    assert _recorded_path("/x" * 400) == ("/x" * 400)[:512]


def test_a_stored_record_with_a_field_this_version_does_not_know_is_read_without_it() -> None:
    record = UsageRecord("x" * 32, 60.0, "r", "t", "u", "k", "POST", "/p", 200, prompt_tokens=3)
    newer = {**record_to_dict(record), "a_field_of_a_newer_version": 1}
    assert record_from_dict(newer) == record
    assert record_from_dict(record_to_dict(record)) == record
