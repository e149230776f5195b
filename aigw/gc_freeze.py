"""Keep a started worker's long-lived objects out of the cyclic garbage collector's way.

After imports and a Gateway's start a worker holds ~50,000 GC-tracked objects that live as long as it does
(modules, config, encodings, store clients). Every full (gen-2) collection walked them all: 30-140 ms with the
event loop stopped, a p99.9 spike at c1 and a stall for every request in flight at c32. ``gc.freeze()`` moves
them to the permanent generation, which collections skip; the garbage made per request is collected as before.
"""

from __future__ import annotations

import gc


def freeze_startup_objects() -> None:
    """Freeze what is alive now, once per process: a later gateway (a Functions reload) keeps its own objects
    collectable, so a replaced one's cycles can still be freed."""
    if gc.get_freeze_count() == 0:
        gc.collect()  # free startup's garbage first: what is frozen is never collected
        gc.freeze()
