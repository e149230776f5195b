"""Pure functions that order a pool's targets; the failover loop tries them in the order given."""

from __future__ import annotations

import random
from collections.abc import Sequence

from .pools import Target


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
