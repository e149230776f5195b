"""Refusals before authentication, aggregated: one record per source address, refusal code and UTC minute.

Anyone can send requests without a key, so one record each would let them flood the usage store. Instead each
(address, code, minute) is counted in memory and handed to the sink as one record (``count`` requests) once its
minute has closed. The map is bounded: past ``max_keys`` addresses in one minute, further addresses are folded
into one ``(other)`` row per code, so an attacker rotating source addresses grows it by no more than that.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

from ..ids import new_id
from .record import UNAUTHENTICATED, UsageRecord
from .sink import UsageSink

OTHER = "(other)"  # the source address of the row the overflow of a minute is folded into
MAX_KEYS_PER_MINUTE = 1000
_MINUTE_S = 60


@dataclass(slots=True, frozen=True)
class _Key:
    minute: int  # UTC minute, as unix seconds // 60
    client_ip: str
    error_code: str
    status: int


class RefusalAggregator:
    def __init__(self, sink: UsageSink, max_keys: int = MAX_KEYS_PER_MINUTE) -> None:
        self._sink = sink
        self._max_keys = max_keys
        self._counts: dict[_Key, int] = {}
        self._addresses: dict[int, int] = {}  # minute with rows -> its addresses with a row of their own

    def __len__(self) -> int:
        return len(self._counts)

    def add(self, time_s: float, client_ip: str, status: int, error_code: str) -> None:
        """Count one refusal (hands the rows of minutes closed by now to the sink first)."""
        minute = math.floor(time_s / _MINUTE_S)
        self.emit_closed(time_s)
        key = _Key(minute, client_ip[:64] or "(unknown)", error_code, status)
        seen = self._addresses.setdefault(minute, 0)
        if key not in self._counts:
            if seen >= self._max_keys:
                key = _Key(minute, OTHER, error_code, status)
            else:
                self._addresses[minute] = seen + 1
        self._counts[key] = self._counts.get(key, 0) + 1

    def emit_closed(self, now_s: float) -> None:
        """Hand the rows of every minute that ended before ``now_s`` to the sink."""
        current = math.floor(now_s / _MINUTE_S)
        if self._addresses and min(self._addresses) < current:  # a few minutes at most, not every row
            self._emit(lambda key: key.minute < current)

    def emit_all(self) -> None:
        """Hand every row to the sink, open minutes too (at shutdown; a later refusal in the same minute then
        starts a new row: counts still add up)."""
        self._emit(lambda key: True)

    def _emit(self, due: Callable[[_Key], bool]) -> None:
        rows = [(key, count) for key, count in self._counts.items() if due(key)]
        for key, count in rows:
            del self._counts[key]
            self._sink.record(_record(key, count))
        live = {key.minute for key in self._counts}
        self._addresses = {minute: n for minute, n in self._addresses.items() if minute in live}


def _record(key: _Key, count: int) -> UsageRecord:
    return UsageRecord(
        record_id=new_id(),
        time_s=float(key.minute * _MINUTE_S),
        request_id="",
        tenant=UNAUTHENTICATED,
        user=UNAUTHENTICATED,
        key_id=None,
        method="",
        path="",  # the paths vary (and are the client's choice); the row counts refusals, not what was asked
        status=key.status,
        error_code=key.error_code,
        client_ip=key.client_ip,
        count=count,
    )
