"""A started ``Gateway`` for in-process tests, closed (its background work drained) however the test ends."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from gateway_core.app import Gateway
from gateway_core.clock import Clock
from gateway_core.config import GatewayConfig


@asynccontextmanager
async def running(config: GatewayConfig, clock: Clock | None = None) -> AsyncIterator[Gateway]:
    gw = Gateway(config, clock=clock)
    await gw.start()
    try:
        yield gw
    finally:
        await gw.close()
