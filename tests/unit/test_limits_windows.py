from __future__ import annotations

import math
from datetime import UTC, datetime

import pytest

from gateway_core.limits.windows import minute_window, quota_period, sliding_used, tpm_retry_after_s


def ts(text: str) -> float:
    return datetime.fromisoformat(text).replace(tzinfo=UTC).timestamp()


def test_minute_window_and_sliding_weight() -> None:
    start, elapsed = minute_window(ts("2026-11-25T10:00:45"))
    assert start == ts("2026-11-25T10:00:00") and elapsed == 45
    assert sliding_used(previous=800, current=100, elapsed_s=45) == pytest.approx(300)


@pytest.mark.parametrize(
    ("period", "now", "start", "end"),
    [
        ("hourly", "2026-11-25T10:59:59", "2026-11-25T10:00:00", "2026-11-25T11:00:00"),
        ("daily", "2026-11-25T00:00:00", "2026-11-25T00:00:00", "2026-11-26T00:00:00"),
        ("weekly", "2026-11-25T13:00:00", "2026-11-23T00:00:00", "2026-11-30T00:00:00"),  # Monday to Monday
        ("monthly", "2026-02-14T08:00:00", "2026-02-01T00:00:00", "2026-03-01T00:00:00"),
        ("monthly", "2026-12-31T23:59:59", "2026-12-01T00:00:00", "2027-01-01T00:00:00"),
    ],
)
def test_quota_periods_are_utc_calendar_periods(period: str, now: str, start: str, end: str) -> None:
    assert quota_period(ts(now), period) == (int(ts(start)), int(ts(end)))


def test_quota_periods_stay_exact_across_boundaries_and_back() -> None:
    # The last period of each kind is remembered; a time outside it (later, or earlier: a clock set back) is
    # computed afresh, to the second at each edge.
    day = ts("2026-11-25T00:00:00"), ts("2026-11-26T00:00:00")
    for now, expected in [
        (ts("2026-11-25T12:00:00"), day),
        (ts("2026-11-25T23:59:59.999"), day),
        (ts("2026-11-26T00:00:00"), (day[1], day[1] + 86400)),
        (ts("2026-11-25T00:00:00"), day),
        (ts("2026-11-24T23:59:59.5"), (day[0] - 86400, day[0])),
    ]:
        assert quota_period(now, "daily") == expected
        assert quota_period(now, "hourly") == (int(now // 3600 * 3600), int(now // 3600 * 3600) + 3600)


def test_retry_after_within_the_window_from_previous_decay() -> None:
    # 600 from the previous minute, 30 s in: weight 0.5 → 300 + current 600 = 900 of 1000; need 200 → 100 over.
    wait = tpm_retry_after_s(previous=600, current=600, elapsed_s=30, need=200, limit=1000)
    assert wait == pytest.approx(10.0)  # previous decays at 10 tokens/s
    assert sliding_used(600, 600, 30 + wait) + 200 == pytest.approx(1000)


def test_retry_after_crossing_into_the_next_window() -> None:
    # No previous; 900 used now at 20 s; need 300 → at 60 s current becomes previous, decaying at 15/s.
    wait = tpm_retry_after_s(previous=0, current=900, elapsed_s=20, need=300, limit=1000)
    assert wait == pytest.approx(40 + 200 / 15)


def test_retry_after_when_it_already_fits_or_never_can() -> None:
    assert tpm_retry_after_s(previous=0, current=100, elapsed_s=5, need=100, limit=1000) == 0
    assert tpm_retry_after_s(previous=0, current=0, elapsed_s=5, need=2000, limit=1000) == math.inf
