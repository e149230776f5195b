"""``bounded`` runs a Table Storage adapter's transactions or queries a few at a time. Cancelled (a usage writer
closing during an outage), the calls still queued at its gate never run: they must be closed, not left to be
collected as "coroutine was never awaited" warnings (which CI, with warnings as errors, saw as a failure)."""

from __future__ import annotations

import asyncio
import gc
import warnings

from gateway_core.storage.tables import bounded


async def test_calls_still_queued_when_bounded_is_cancelled_are_closed_not_left_unawaited() -> None:
    running = asyncio.Event()

    async def slow() -> None:
        running.set()
        await asyncio.sleep(3600)

    calls = [slow() for _ in range(20)]  # more than run at once: most wait at the gate
    task = asyncio.create_task(bounded(calls))
    await running.wait()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
        del calls, task
        gc.collect()
    assert [str(w.message) for w in caught if "never awaited" in str(w.message)] == []


async def test_results_come_back_in_order_and_a_failure_is_raised_after_all_ended() -> None:
    ended: list[int] = []

    async def value(n: int) -> int:
        await asyncio.sleep(0)
        ended.append(n)
        if n == 3:
            raise ValueError("three")
        return n

    assert await bounded(value(n) for n in range(3)) == [0, 1, 2]
    try:
        await bounded(value(n) for n in range(10))
    except ValueError as exc:
        assert str(exc) == "three"
    else:
        raise AssertionError("the failure was not raised")
    assert sorted(ended[3:]) == list(range(10))
