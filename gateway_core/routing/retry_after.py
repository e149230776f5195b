"""How long a backend asked us to wait, from whichever header it used."""

from __future__ import annotations

import re
from collections.abc import Iterable
from email.utils import parsedate_to_datetime

_DURATION = re.compile(r"^(?:(\d+(?:\.\d+)?)h)?(?:(\d+(?:\.\d+)?)m(?!s))?(?:(\d+(?:\.\d+)?)s)?(?:(\d+(?:\.\d+)?)ms)?$")


def retry_after_s(headers: Iterable[tuple[str, str]], now_s: float) -> float | None:
    """Seconds from ``retry-after-ms``, ``retry-after`` (seconds or an HTTP date), or the OpenAI-style
    ``x-ratelimit-reset-requests`` / ``-tokens`` durations (``1s``, ``6m0s``, ``20ms``); None if none is usable."""
    values = {k.lower(): v.strip() for k, v in headers}
    if "retry-after-ms" in values:
        try:
            return max(0.0, float(values["retry-after-ms"]) / 1000)
        except ValueError:
            pass
    if "retry-after" in values:
        raw = values["retry-after"]
        try:
            return max(0.0, float(raw))
        except ValueError:
            try:
                return max(0.0, parsedate_to_datetime(raw).timestamp() - now_s)
            except (TypeError, ValueError):
                pass
    resets = [duration_s(values[h]) for h in ("x-ratelimit-reset-requests", "x-ratelimit-reset-tokens") if h in values]
    known = [r for r in resets if r is not None]
    return max(known) if known else None


def duration_s(text: str) -> float | None:
    match = _DURATION.match(text.strip())
    if not match or not any(match.groups()):
        try:
            return float(text)
        except ValueError:
            return None
    hours, minutes, seconds, millis = (float(g) if g else 0.0 for g in match.groups())
    return hours * 3600 + minutes * 60 + seconds + millis / 1000
