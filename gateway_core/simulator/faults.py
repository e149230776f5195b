"""Faults and limits: which fault a request meets, what Azure OpenAI answers for it, and the simulator's own
tokens-per-minute limit.

A header (``x-aigw-sim-fault``) forces a fault on one request; otherwise each configured fault (the
deployment's, then those for every deployment) strikes a ``rate`` share of requests, drawn from a seeded RNG so
a run is repeatable.
"""

from __future__ import annotations

import random
import time
from collections.abc import Callable, Iterable, Mapping
from typing import get_args

from .reply import SimReply, azure_error
from .settings import Fault, FaultKind

FAULT_KINDS: tuple[str, ...] = get_args(FaultKind)


def pick_fault(rng: random.Random, faults: Iterable[Fault], headers: Mapping[str, str]) -> Fault | None:
    """The fault this request meets: the one its headers force, else the first of ``faults`` that strikes.

    An unknown forced kind means no fault (and draws nothing from ``rng``).
    """
    forced = headers.get("x-aigw-sim-fault")
    if forced:
        if forced not in FAULT_KINDS:
            return None
        return Fault.model_validate(
            {"kind": forced, "retry_after_s": float(headers.get("x-aigw-sim-retry-after", "1"))}
        )
    for fault in faults:
        if rng.random() < fault.rate:
            return fault
    return None


def fault_reply(fault: Fault) -> SimReply:
    """What Azure OpenAI answers for a 429, 500 or 503 fault (``slow`` and ``drop`` shape a normal answer)."""
    retry_after = fault.retry_after_s
    retry_after_whole_s = max(1, round(retry_after))
    retry = (("retry-after", str(retry_after_whole_s)), ("retry-after-ms", str(int(retry_after * 1000))))
    if fault.kind == "429":
        message = (
            "Requests to the ChatCompletions_Create Operation under Azure OpenAI API version 2024-10-21 have "
            "exceeded token rate limit of your current OpenAI S0 pricing tier. Please retry after "
            f"{retry_after_whole_s} seconds."
        )
        return azure_error(429, "429", message, (*retry, ("x-ratelimit-remaining-tokens", "0")))
    if fault.kind == "503":
        return azure_error(
            503, "ServiceUnavailable", "The service is temporarily unable to process your request.", retry
        )
    return azure_error(500, "InternalServerError", "The server had an error while processing your request.")


class TokensPerMinute:
    """Azure's own throttling: each deployment may use ``limit`` tokens per calendar minute."""

    def __init__(self, clock: Callable[[], float] | None = None) -> None:
        self._now = clock if clock is not None else time.time
        self._used: dict[tuple[str, int], int] = {}  # (deployment, minute) -> tokens; only the current minute

    def wait_s(self, deployment: str, limit: int | None, tokens: int) -> float | None:
        """Seconds until the minute renews if ``tokens`` more would pass ``limit``; else counts them, None."""
        if limit is None:
            return None
        now = self._now()
        minute = int(now // 60)
        key = (deployment, minute)
        used = self._used.get(key, 0)
        if used + tokens > limit:
            return (minute + 1) * 60 - now
        self._used = {k: v for k, v in self._used.items() if k[1] == minute}
        self._used[key] = used + tokens
        return None
