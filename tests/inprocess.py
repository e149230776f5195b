"""A started ``Gateway`` for in-process tests, closed (its background work drained) however the test ends."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from gateway_core.app import Gateway
from gateway_core.clock import Clock
from gateway_core.config import GatewayConfig
from gateway_core.usage.sink import UsageSink


@asynccontextmanager
async def running(
    config: GatewayConfig, clock: Clock | None = None, usage_sink: UsageSink | None = None
) -> AsyncIterator[Gateway]:
    gw = Gateway(config, clock=clock, usage_sink=usage_sink)
    await gw.start()
    try:
        yield gw
    finally:
        await gw.close()
