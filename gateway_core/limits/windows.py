"""Window arithmetic for token limits, pure functions of the clock.

Tokens per minute use a sliding window, approximated from two fixed one-minute windows: the tokens counted
now are ``previous × (1 − elapsed/60) + current``. A fixed window would let a client spend the whole
limit at 12:00:59 and again at 12:01:00 (twice the rate); the approximation smooths that out at the cost of
one extra counter read per minute, which is cached. Quotas use fixed calendar periods in UTC (hour, day,
week from Monday, month), since a monthly quota means the calendar month to the people who set it.
"""

from __future__ import annotations

import calendar
import math
from datetime import UTC, datetime, timedelta

MINUTE_S = 60


def minute_window(now_s: float) -> tuple[int, float]:
    """(start of the current one-minute window, seconds elapsed in it)."""
    start = int(now_s // MINUTE_S) * MINUTE_S
    return start, now_s - start


def sliding_used(previous: int, current: int, elapsed_s: float) -> float:
    return previous * (1.0 - elapsed_s / MINUTE_S) + current


def tpm_retry_after_s(previous: int, current: int, elapsed_s: float, need: int, limit: int) -> float:
    """Seconds until ``need`` more tokens fit under ``limit``, as the previous window's weight decays.

    ``current`` excludes the refused request. Returns ``math.inf`` if ``need`` alone exceeds ``limit``.
    """
    if need > limit:
        return math.inf
    excess = sliding_used(previous, current, elapsed_s) + need - limit
    if excess <= 0:
        return 0.0
    decay_per_s = previous / MINUTE_S
    remaining_s = MINUTE_S - elapsed_s
    if decay_per_s > 0 and excess <= decay_per_s * remaining_s:
        return excess / decay_per_s
    # Not within this window: at its end the current window becomes the previous one, weight 1, decaying.
    excess_then = current + need - limit
    if excess_then <= 0:
        return remaining_s
    return remaining_s + excess_then / (current / MINUTE_S)


# The last period computed for each kind: every request of a day falls in the same one, and the calendar
# arithmetic below was ~20 us, twice per request with a quota (a tuple swap, safe across threads).
_last_period: dict[str, tuple[int, int]] = {}


def quota_period(now_s: float, period: str) -> tuple[int, int]:
    """(start, end) in unix seconds of the UTC calendar period containing ``now_s``."""
    last = _last_period.get(period)
    if last is not None and last[0] <= now_s < last[1]:
        return last
    last = _last_period[period] = _calendar_period(now_s, period)
    return last


def _calendar_period(now_s: float, period: str) -> tuple[int, int]:
    now = datetime.fromtimestamp(now_s, UTC)
    if period == "hourly":
        start = now.replace(minute=0, second=0, microsecond=0)
        end = start + timedelta(hours=1)
    elif period == "daily":
        start = now.replace(hour=0, minute=0, second=0, microsecond=0)
        end = start + timedelta(days=1)
    elif period == "weekly":
        start = (now - timedelta(days=now.weekday())).replace(hour=0, minute=0, second=0, microsecond=0)
        end = start + timedelta(days=7)
    elif period == "monthly":
        start = now.replace(day=1, hour=0, minute=0, second=0, microsecond=0)
        days = calendar.monthrange(start.year, start.month)[1]
        end = start + timedelta(days=days)
    else:
        raise ValueError(f"unknown quota period {period!r}")
    return int(start.timestamp()), int(end.timestamp())
