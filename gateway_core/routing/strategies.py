"""Pure functions that order a pool's targets; the failover loop tries them in the order given.

Within a priority, the choice is weighted random (not smooth weighted round-robin): it needs no state shared
between workers or instances, and over many requests gives each backend its weight's share.
"""

from __future__ import annotations

import random
from collections.abc import Sequence

from ..catalogue import Target


def by_priority_then_weight(targets: Sequence[Target], rng: random.Random) -> list[Target]:
    """Lowest priority number first; within one priority, a weighted random order (weight = share of traffic)."""
    if len(targets) <= 1:
        return list(targets)
    ordered: list[Target] = []
    for priority in sorted({t.backend.priority for t in targets}):
        group = [t for t in targets if t.backend.priority == priority]
        while group:
            pick = rng.choices(range(len(group)), weights=[t.backend.weight for t in group])[0]
            ordered.append(group.pop(pick))
    return ordered


def region_first(ordered: list[Target], region: str | None) -> list[Target]:
    """The caller's region first (keeping the order within it), then the rest; unknown regions change nothing."""
    if not region:
        return ordered
    region = region.lower()
    local = [t for t in ordered if t.backend.region.lower() == region]
    if not local:
        return ordered
    return local + [t for t in ordered if t.backend.region.lower() != region]
